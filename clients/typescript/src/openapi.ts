// Generated from idemq's /openapi.json by `npm run gen:types` (openapi-typescript).
// Do not edit: a test fails when this differs from what the server serves.
export interface paths {
    "/applications/{id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /** The application and its contract, if approved. */
        get: {
            parameters: {
                query?: never;
                header?: never;
                path: {
                    /** @description 1–200 characters, no control characters (U+0000–U+001F, U+007F–U+009F). */
                    id: string;
                };
                cookie?: never;
            };
            requestBody?: never;
            responses: {
                200: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["ApprovalBody"];
                    };
                };
                400: components["responses"]["InvalidPath"];
                401: components["responses"]["Unauthorized"];
                /** @description not-found: no such application */
                404: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                429: components["responses"]["RateLimited"];
                500: components["responses"]["InternalError"];
                503: components["responses"]["ServiceUnavailable"];
            };
        };
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/applications/{id}/approve": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        /** Approve a pending application; creates its contract in the same transaction. */
        patch: {
            parameters: {
                query?: never;
                header: {
                    /**
                     * @description 1–255 visible ASCII bytes; `"abc"` (structured field, `\"` and `\\` escapes) and `abc`
                     *     are the same key (the pattern: a bare key does not start with a quote).
                     *     Missing → 400 idempotency-key-missing; empty, too long or other characters → 400
                     *     idempotency-key-empty / -too-long / -invalid-characters. (Declared required even when
                     *     the server runs with IDEMQ_REQUIRE_IDEMPOTENCY_KEY=false, a rollback switch that
                     *     clients must not rely on.)
                     */
                    "Idempotency-Key": string;
                    /**
                     * @description `wait=N` (seconds, at most 30): answer when the operation finishes or N passes.
                     *     Other preferences are ignored.
                     */
                    Prefer?: string;
                };
                path: {
                    /** @description 1–200 characters, no control characters (U+0000–U+001F, U+007F–U+009F). */
                    id: string;
                };
                cookie?: never;
            };
            /** @description `{}`, `{"note": "…"}` or no body */
            requestBody?: {
                content: {
                    "application/json": components["schemas"]["Approve"];
                };
            };
            responses: {
                /** @description Final response: `{application, contract}` */
                200: {
                    headers: {
                        /** @description `true` on a replay */
                        "Idempotent-Replayed"?: string;
                        /** @description `wait=N` when the request asked to wait */
                        "Preference-Applied"?: string;
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["ApprovalBody"];
                    };
                };
                /** @description Accepted (or a replay of an unfinished operation): poll `Location` */
                202: {
                    headers: {
                        /** @description `true` on a replay */
                        "Idempotent-Replayed"?: string;
                        /** @description /operations/{id} */
                        Location?: string;
                        /** @description `wait=N` when the request asked to wait */
                        "Preference-Applied"?: string;
                        /** @description Remaining budget (draft-11), when rate limiting is on */
                        RateLimit?: string;
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["OperationView"];
                    };
                };
                400: components["responses"]["MutationWithIdBadRequest"];
                401: components["responses"]["Unauthorized"];
                /** @description Final response (stored refusal): application-not-found */
                404: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                /** @description Final response (stored refusal): application-not-pending */
                409: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                413: components["responses"]["PayloadTooLarge"];
                415: components["responses"]["UnsupportedMediaType"];
                422: components["responses"]["KeyReused"];
                429: components["responses"]["RateLimited"];
                500: components["responses"]["InternalError"];
                503: components["responses"]["ServiceUnavailable"];
            };
        };
        trace?: never;
    };
    "/applications/{id}/reject": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        /** Reject a pending application. */
        patch: {
            parameters: {
                query?: never;
                header: {
                    /**
                     * @description 1–255 visible ASCII bytes; `"abc"` (structured field, `\"` and `\\` escapes) and `abc`
                     *     are the same key (the pattern: a bare key does not start with a quote).
                     *     Missing → 400 idempotency-key-missing; empty, too long or other characters → 400
                     *     idempotency-key-empty / -too-long / -invalid-characters. (Declared required even when
                     *     the server runs with IDEMQ_REQUIRE_IDEMPOTENCY_KEY=false, a rollback switch that
                     *     clients must not rely on.)
                     */
                    "Idempotency-Key": string;
                    /**
                     * @description `wait=N` (seconds, at most 30): answer when the operation finishes or N passes.
                     *     Other preferences are ignored.
                     */
                    Prefer?: string;
                };
                path: {
                    /** @description 1–200 characters, no control characters (U+0000–U+001F, U+007F–U+009F). */
                    id: string;
                };
                cookie?: never;
            };
            requestBody: {
                content: {
                    "application/json": components["schemas"]["Reject"];
                };
            };
            responses: {
                /** @description Final response: `{application}` */
                200: {
                    headers: {
                        /** @description `true` on a replay */
                        "Idempotent-Replayed"?: string;
                        /** @description `wait=N` when the request asked to wait */
                        "Preference-Applied"?: string;
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["ApplicationBody"];
                    };
                };
                /** @description Accepted (or a replay of an unfinished operation): poll `Location` */
                202: {
                    headers: {
                        /** @description `true` on a replay */
                        "Idempotent-Replayed"?: string;
                        /** @description /operations/{id} */
                        Location?: string;
                        /** @description `wait=N` when the request asked to wait */
                        "Preference-Applied"?: string;
                        /** @description Remaining budget (draft-11), when rate limiting is on */
                        RateLimit?: string;
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["OperationView"];
                    };
                };
                400: components["responses"]["MutationWithIdBadRequest"];
                401: components["responses"]["Unauthorized"];
                /** @description Final response (stored refusal): application-not-found */
                404: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                /** @description Final response (stored refusal): application-not-pending */
                409: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                413: components["responses"]["PayloadTooLarge"];
                415: components["responses"]["UnsupportedMediaType"];
                422: components["responses"]["KeyReused"];
                429: components["responses"]["RateLimited"];
                500: components["responses"]["InternalError"];
                503: components["responses"]["ServiceUnavailable"];
            };
        };
        trace?: never;
    };
    "/contracts/{id}/meter-readings": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /** A contract's meter readings, oldest first. */
        get: {
            parameters: {
                query?: never;
                header?: never;
                path: {
                    /** @description 1–200 characters, no control characters (U+0000–U+001F, U+007F–U+009F). */
                    id: string;
                };
                cookie?: never;
            };
            requestBody?: never;
            responses: {
                200: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["MeterReadingList"];
                    };
                };
                400: components["responses"]["InvalidPath"];
                401: components["responses"]["Unauthorized"];
                /** @description not-found: no such contract */
                404: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                429: components["responses"]["RateLimited"];
                500: components["responses"]["InternalError"];
                503: components["responses"]["ServiceUnavailable"];
            };
        };
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/healthz": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /** Liveness only: the process answers. */
        get: {
            parameters: {
                query?: never;
                header?: never;
                path?: never;
                cookie?: never;
            };
            requestBody?: never;
            responses: {
                /** @description alive: `{"status": "ok"}` */
                200: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": unknown;
                    };
                };
            };
        };
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/invoices/{id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /** The invoice, for the frontend. */
        get: {
            parameters: {
                query?: never;
                header?: never;
                path: {
                    /** @description 1–200 characters, no control characters (U+0000–U+001F, U+007F–U+009F). */
                    id: string;
                };
                cookie?: never;
            };
            requestBody?: never;
            responses: {
                200: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["InvoiceBody"];
                    };
                };
                400: components["responses"]["InvalidPath"];
                401: components["responses"]["Unauthorized"];
                /** @description not-found: no such invoice */
                404: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                429: components["responses"]["RateLimited"];
                500: components["responses"]["InternalError"];
                503: components["responses"]["ServiceUnavailable"];
            };
        };
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/invoices/{id}/mark-paid": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        /** Mark an invoice paid (UNPAID → PAID under a row lock). */
        patch: {
            parameters: {
                query?: never;
                header: {
                    /**
                     * @description 1–255 visible ASCII bytes; `"abc"` (structured field, `\"` and `\\` escapes) and `abc`
                     *     are the same key (the pattern: a bare key does not start with a quote).
                     *     Missing → 400 idempotency-key-missing; empty, too long or other characters → 400
                     *     idempotency-key-empty / -too-long / -invalid-characters. (Declared required even when
                     *     the server runs with IDEMQ_REQUIRE_IDEMPOTENCY_KEY=false, a rollback switch that
                     *     clients must not rely on.)
                     */
                    "Idempotency-Key": string;
                    /**
                     * @description `wait=N` (seconds, at most 30): answer when the operation finishes or N passes.
                     *     Other preferences are ignored.
                     */
                    Prefer?: string;
                };
                path: {
                    /** @description 1–200 characters, no control characters (U+0000–U+001F, U+007F–U+009F). */
                    id: string;
                };
                cookie?: never;
            };
            requestBody: {
                content: {
                    "application/json": components["schemas"]["MarkPaid"];
                };
            };
            responses: {
                /** @description Final response (after `Prefer: wait`, or replayed): `{invoice}` */
                200: {
                    headers: {
                        /** @description `true` on a replay */
                        "Idempotent-Replayed"?: string;
                        /** @description `wait=N` when the request asked to wait */
                        "Preference-Applied"?: string;
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["InvoiceBody"];
                    };
                };
                /** @description Accepted (or a replay of an unfinished operation): poll `Location` */
                202: {
                    headers: {
                        /** @description `true` on a replay */
                        "Idempotent-Replayed"?: string;
                        /** @description /operations/{id} */
                        Location?: string;
                        /** @description `wait=N` when the request asked to wait */
                        "Preference-Applied"?: string;
                        /** @description Remaining budget (draft-11), when rate limiting is on */
                        RateLimit?: string;
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["OperationView"];
                    };
                };
                400: components["responses"]["MutationWithIdBadRequest"];
                401: components["responses"]["Unauthorized"];
                /** @description Final response (stored refusal): invoice-not-found */
                404: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                /** @description Final response (stored refusal): invoice-already-paid */
                409: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                413: components["responses"]["PayloadTooLarge"];
                415: components["responses"]["UnsupportedMediaType"];
                422: components["responses"]["KeyReused"];
                429: components["responses"]["RateLimited"];
                500: components["responses"]["InternalError"];
                503: components["responses"]["ServiceUnavailable"];
            };
        };
        trace?: never;
    };
    "/meter-readings": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        /** Record a meter reading under the contract's row lock. */
        post: {
            parameters: {
                query?: never;
                header: {
                    /**
                     * @description 1–255 visible ASCII bytes; `"abc"` (structured field, `\"` and `\\` escapes) and `abc`
                     *     are the same key (the pattern: a bare key does not start with a quote).
                     *     Missing → 400 idempotency-key-missing; empty, too long or other characters → 400
                     *     idempotency-key-empty / -too-long / -invalid-characters. (Declared required even when
                     *     the server runs with IDEMQ_REQUIRE_IDEMPOTENCY_KEY=false, a rollback switch that
                     *     clients must not rely on.)
                     */
                    "Idempotency-Key": string;
                    /**
                     * @description `wait=N` (seconds, at most 30): answer when the operation finishes or N passes.
                     *     Other preferences are ignored.
                     */
                    Prefer?: string;
                };
                path?: never;
                cookie?: never;
            };
            requestBody: {
                content: {
                    "application/json": components["schemas"]["RecordReading"];
                };
            };
            responses: {
                /** @description Final response: `{meterReading}` */
                201: {
                    headers: {
                        /** @description `true` on a replay */
                        "Idempotent-Replayed"?: string;
                        /** @description `wait=N` when the request asked to wait */
                        "Preference-Applied"?: string;
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["MeterReadingBody"];
                    };
                };
                /** @description Accepted (or a replay of an unfinished operation): poll `Location` */
                202: {
                    headers: {
                        /** @description `true` on a replay */
                        "Idempotent-Replayed"?: string;
                        /** @description /operations/{id} */
                        Location?: string;
                        /** @description `wait=N` when the request asked to wait */
                        "Preference-Applied"?: string;
                        /** @description Remaining budget (draft-11), when rate limiting is on */
                        RateLimit?: string;
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["OperationView"];
                    };
                };
                400: components["responses"]["MutationBadRequest"];
                401: components["responses"]["Unauthorized"];
                /** @description Final response (stored refusal): contract-not-found */
                404: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                413: components["responses"]["PayloadTooLarge"];
                415: components["responses"]["UnsupportedMediaType"];
                /** @description idempotency-key-reused (the key belongs to another request; nothing changed), or the final response (stored refusal) reading-below-last */
                422: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                429: components["responses"]["RateLimited"];
                500: components["responses"]["InternalError"];
                503: components["responses"]["ServiceUnavailable"];
            };
        };
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/openapi.json": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /** This document. */
        get: {
            parameters: {
                query?: never;
                header?: never;
                path?: never;
                cookie?: never;
            };
            requestBody?: never;
            responses: {
                /** @description The OpenAPI 3.1 document */
                200: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": unknown;
                    };
                };
            };
        };
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/operations/{id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /** Poll an operation (the caller's own only); honours `Prefer: wait`. */
        get: {
            parameters: {
                query?: never;
                header?: {
                    /**
                     * @description `wait=N` (seconds, at most 30): answer when the operation finishes or N passes.
                     *     Other preferences are ignored.
                     */
                    Prefer?: string;
                };
                path: {
                    /** @description 1–200 characters, no control characters (U+0000–U+001F, U+007F–U+009F). */
                    id: string;
                };
                cookie?: never;
            };
            requestBody?: never;
            responses: {
                200: {
                    headers: {
                        /** @description wait=N when honoured */
                        "Preference-Applied"?: string;
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["OperationView"];
                    };
                };
                400: components["responses"]["InvalidPath"];
                401: components["responses"]["Unauthorized"];
                /** @description not-found: unknown, another principal's, or expired and deleted */
                404: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                429: components["responses"]["RateLimited"];
                500: components["responses"]["InternalError"];
                503: components["responses"]["ServiceUnavailable"];
            };
        };
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/readyz": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /** Readiness: the database answers and every migration is applied. */
        get: {
            parameters: {
                query?: never;
                header?: never;
                path?: never;
                cookie?: never;
            };
            requestBody?: never;
            responses: {
                /** @description ready: `{"status": "ready", …}` */
                200: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": unknown;
                    };
                };
                500: components["responses"]["InternalError"];
                /** @description service-unavailable: the database is unreachable or migrations are not applied */
                503: {
                    headers: {
                        /** @description Seconds to wait before retrying */
                        "Retry-After"?: number;
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
            };
        };
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
}
export type webhooks = Record<string, never>;
export interface components {
    schemas: {
        Application: {
            applicant: string;
            /** Format: date-time */
            decidedAt?: string | null;
            id: string;
            note?: string | null;
            reason?: string | null;
            room: string;
            status: string;
            /** Format: int32 */
            version: number;
        };
        ApplicationBody: {
            application: components["schemas"]["Application"];
        };
        ApprovalBody: {
            application: components["schemas"]["Application"];
            contract?: components["schemas"]["Contract"] | null;
        };
        Approve: {
            note?: string | null;
        };
        Contract: {
            applicationId?: string | null;
            /** Format: date-time */
            createdAt: string;
            id: string;
        };
        Invoice: {
            /** Format: int64 */
            amountCents: number;
            currency: string;
            id: string;
            /** Format: date-time */
            paidAt?: string | null;
            paymentMethod?: string | null;
            status: string;
        };
        InvoiceBody: {
            invoice: components["schemas"]["Invoice"];
        };
        Links: {
            self: string;
        };
        MarkPaid: {
            paymentMethod: string;
        };
        MeterReading: {
            contractId: string;
            id: string;
            /** Format: double */
            reading: number;
            /** Format: date-time */
            recordedAt: string;
        };
        MeterReadingBody: {
            meterReading: components["schemas"]["MeterReading"];
        };
        MeterReadingList: {
            contractId: string;
            meterReadings: components["schemas"]["MeterReading"][];
        };
        /** @description The public representation (docs/routes-and-answers.md, "The operation"). */
        OperationView: {
            /** Format: date-time */
            createdAt: string;
            /** Format: date-time */
            finishedAt?: string | null;
            /** @description `op_` + 32 hex digits. */
            id: string;
            idempotencyKey: string;
            /** @description invoice.mark_paid, application.approve, application.reject or meter_reading.record. */
            kind: string;
            links: components["schemas"]["Links"];
            response?: components["schemas"]["ResponseView"] | null;
            /** @description queued, running, succeeded or failed. */
            status: string;
        };
        /**
         * @description RFC 9457 problem details. `type` is `https://idemq.dev/problems/` + one of:
         *     unauthorized, idempotency-key-missing, idempotency-key-empty,
         *     idempotency-key-too-long, idempotency-key-invalid-characters,
         *     idempotency-key-reused, invalid-body, invalid-path, payload-too-large,
         *     unsupported-media-type,
         *     not-found, method-not-allowed, rate-limited, service-unavailable,
         *     internal-error; stored by jobs: invoice-not-found, invoice-already-paid,
         *     application-not-found, application-not-pending, contract-not-found,
         *     reading-below-last, operation-failed.
         */
        Problem: {
            detail?: string | null;
            /**
             * @description Only on a 500 `internal-error`: the id of the log line that tells
             *     the operator what failed.
             */
            errorId?: string | null;
            /** Format: int32 */
            status: number;
            title: string;
            /** @example https://idemq.dev/problems/idempotency-key-missing */
            type: string;
        };
        RecordReading: {
            contractId: string;
            /**
             * Format: double
             * @description A JSON number ≥ 0; equal to the last reading is allowed, below it is refused (422).
             */
            reading: number;
        };
        Reject: {
            reason: string;
        };
        ResponseView: {
            /** @description The stored body embedded as is: the same bytes a replay returns. */
            body: Record<string, never>;
            /** Format: int32 */
            status: number;
        };
    };
    responses: {
        /**
         * @description `internal-error`: a failure that retrying will not fix; `errorId` names the server's log
         *     line. Nothing was recorded.
         */
        InternalError: {
            headers: {
                [name: string]: unknown;
            };
            content: {
                "application/problem+json": components["schemas"]["Problem"];
            };
        };
        /** @description `invalid-path`: the id is empty, longer than 200 characters or has control characters. */
        InvalidPath: {
            headers: {
                [name: string]: unknown;
            };
            content: {
                "application/problem+json": components["schemas"]["Problem"];
            };
        };
        /**
         * @description `idempotency-key-reused`: the key belongs to an earlier request with another method,
         *     path or body. Nothing changed.
         */
        KeyReused: {
            headers: {
                [name: string]: unknown;
            };
            content: {
                "application/problem+json": components["schemas"]["Problem"];
            };
        };
        /**
         * @description `idempotency-key-missing`, `idempotency-key-empty`, `idempotency-key-too-long`,
         *     `idempotency-key-invalid-characters` or `invalid-body` (not JSON, not an object, wrong
         *     types, unknown or missing fields, a text field blank, too long or with control
         *     characters). Nothing was recorded.
         */
        MutationBadRequest: {
            headers: {
                [name: string]: unknown;
            };
            content: {
                "application/problem+json": components["schemas"]["Problem"];
            };
        };
        /**
         * @description `idempotency-key-missing`, `idempotency-key-empty`, `idempotency-key-too-long`,
         *     `idempotency-key-invalid-characters`, `invalid-body` (not JSON, not an object, wrong
         *     types, unknown or missing fields, a text field blank, too long or with control
         *     characters), or `invalid-path` (the id). Nothing was recorded.
         */
        MutationWithIdBadRequest: {
            headers: {
                [name: string]: unknown;
            };
            content: {
                "application/problem+json": components["schemas"]["Problem"];
            };
        };
        /** @description `payload-too-large`: the body is over IDEMQ_BODY_LIMIT_BYTES. Nothing was recorded. */
        PayloadTooLarge: {
            headers: {
                [name: string]: unknown;
            };
            content: {
                "application/problem+json": components["schemas"]["Problem"];
            };
        };
        /**
         * @description `rate-limited`: the principal's (or, before authentication, the client IP's) budget of
         *     this route class is spent. Nothing was recorded.
         */
        RateLimited: {
            headers: {
                /** @description e.g. `"sensitive";r=0;t=6` */
                RateLimit?: string;
                /** @description draft-ietf-httpapi-ratelimit-headers-11, e.g. `"sensitive";q=10;w=60` */
                "RateLimit-Policy"?: string;
                /** @description Whole seconds (≥ 1) until a request would pass */
                "Retry-After"?: number;
                [name: string]: unknown;
            };
            content: {
                "application/problem+json": components["schemas"]["Problem"];
            };
        };
        /**
         * @description `service-unavailable`: a transient cause (database unreachable, pool exhausted,
         *     serialization failure). Nothing was recorded: retry the same request, same key.
         */
        ServiceUnavailable: {
            headers: {
                /** @description Seconds to wait before retrying */
                "Retry-After"?: number;
                [name: string]: unknown;
            };
            content: {
                "application/problem+json": components["schemas"]["Problem"];
            };
        };
        /** @description `unauthorized`: no bearer token, or one the server does not know. */
        Unauthorized: {
            headers: {
                /** @description `Bearer` */
                "WWW-Authenticate"?: string;
                [name: string]: unknown;
            };
            content: {
                "application/problem+json": components["schemas"]["Problem"];
            };
        };
        /**
         * @description `unsupported-media-type`: a body that is not declared `application/json`. Nothing was
         *     recorded.
         */
        UnsupportedMediaType: {
            headers: {
                [name: string]: unknown;
            };
            content: {
                "application/problem+json": components["schemas"]["Problem"];
            };
        };
    };
    parameters: never;
    requestBodies: never;
    headers: never;
    pathItems: never;
}
export type $defs = Record<string, never>;
export type operations = Record<string, never>;
