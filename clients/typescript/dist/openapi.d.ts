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
                    /** @description Application id */
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
                401: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                404: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                429: {
                    headers: {
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
                header?: {
                    /**
                     * @description 1–255 visible ASCII bytes; `"abc"` (structured field) and `abc` are the same key.
                     *     Required unless IDEMQ_REQUIRE_IDEMPOTENCY_KEY=false.
                     */
                    "Idempotency-Key"?: string | null;
                    /** @description `wait=N` (seconds, at most 30): answer when the operation finishes or N passes. */
                    Prefer?: string | null;
                };
                path: {
                    /** @description Application id */
                    id: string;
                };
                cookie?: never;
            };
            /** @description `{}` or `{"note": "…"}` */
            requestBody: {
                content: {
                    "application/json": components["schemas"]["Approve"];
                };
            };
            responses: {
                /** @description Final response: `{application, contract}` */
                200: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["ApprovalBody"];
                    };
                };
                202: {
                    headers: {
                        "Idempotent-Replayed"?: string;
                        Location?: string;
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["OperationView"];
                    };
                };
                400: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                401: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                /** @description Stored refusal: application-not-found */
                404: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                /** @description Stored refusal: application-not-pending */
                409: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                413: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                422: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                429: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                503: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
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
                header?: {
                    /**
                     * @description 1–255 visible ASCII bytes; `"abc"` (structured field) and `abc` are the same key.
                     *     Required unless IDEMQ_REQUIRE_IDEMPOTENCY_KEY=false.
                     */
                    "Idempotency-Key"?: string | null;
                    /** @description `wait=N` (seconds, at most 30): answer when the operation finishes or N passes. */
                    Prefer?: string | null;
                };
                path: {
                    /** @description Application id */
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
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["ApplicationBody"];
                    };
                };
                202: {
                    headers: {
                        "Idempotent-Replayed"?: string;
                        Location?: string;
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["OperationView"];
                    };
                };
                400: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                401: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                404: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                409: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                413: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                422: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                429: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                503: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
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
                    /** @description Contract id */
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
                401: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                404: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                429: {
                    headers: {
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
                /** @description alive */
                200: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content?: never;
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
                    /** @description Invoice id */
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
                401: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                404: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                429: {
                    headers: {
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
                header?: {
                    /**
                     * @description 1–255 visible ASCII bytes; `"abc"` (structured field) and `abc` are the same key.
                     *     Required unless IDEMQ_REQUIRE_IDEMPOTENCY_KEY=false.
                     */
                    "Idempotency-Key"?: string | null;
                    /** @description `wait=N` (seconds, at most 30): answer when the operation finishes or N passes. */
                    Prefer?: string | null;
                };
                path: {
                    /** @description Invoice id */
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
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["InvoiceBody"];
                    };
                };
                /** @description Accepted (or a replay of an unfinished operation) */
                202: {
                    headers: {
                        /** @description `true` on a replay */
                        "Idempotent-Replayed"?: string;
                        /** @description /operations/{id} */
                        Location?: string;
                        /** @description Remaining budget (draft-11) */
                        RateLimit?: string;
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["OperationView"];
                    };
                };
                /** @description Missing/invalid key or body */
                400: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                401: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                /** @description Stored refusal: invoice-not-found */
                404: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                /** @description Stored refusal: invoice-already-paid */
                409: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                413: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                /** @description idempotency-key-reused */
                422: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                429: {
                    headers: {
                        RateLimit?: string;
                        "RateLimit-Policy"?: string;
                        "Retry-After"?: number;
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                503: {
                    headers: {
                        "Retry-After"?: number;
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
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
                header?: {
                    /**
                     * @description 1–255 visible ASCII bytes; `"abc"` (structured field) and `abc` are the same key.
                     *     Required unless IDEMQ_REQUIRE_IDEMPOTENCY_KEY=false.
                     */
                    "Idempotency-Key"?: string | null;
                    /** @description `wait=N` (seconds, at most 30): answer when the operation finishes or N passes. */
                    Prefer?: string | null;
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
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["MeterReadingBody"];
                    };
                };
                202: {
                    headers: {
                        "Idempotent-Replayed"?: string;
                        Location?: string;
                        [name: string]: unknown;
                    };
                    content: {
                        "application/json": components["schemas"]["OperationView"];
                    };
                };
                400: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                401: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                /** @description Stored refusal: contract-not-found */
                404: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                413: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                /** @description idempotency-key-reused, or stored refusal reading-below-last */
                422: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                429: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                503: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
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
                    /** @description `wait=N` (seconds, at most 30): answer when the operation finishes or N passes. */
                    Prefer?: string | null;
                };
                path: {
                    /** @description op_… */
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
                401: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                /** @description Unknown, another principal's, or expired and deleted */
                404: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content: {
                        "application/problem+json": components["schemas"]["Problem"];
                    };
                };
                429: {
                    headers: {
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
                /** @description ready */
                200: {
                    headers: {
                        [name: string]: unknown;
                    };
                    content?: never;
                };
                503: {
                    headers: {
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
        /** @description The public representation (DESIGN.md "The operation representation"). */
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
         *     not-found, method-not-allowed, rate-limited, service-unavailable,
         *     internal-error; stored by jobs: invoice-not-found, invoice-already-paid,
         *     application-not-found, application-not-pending, contract-not-found,
         *     reading-below-last, operation-failed.
         */
        Problem: {
            detail?: string | null;
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
    responses: never;
    parameters: never;
    requestBodies: never;
    headers: never;
    pathItems: never;
}
export type $defs = Record<string, never>;
export type operations = Record<string, never>;
