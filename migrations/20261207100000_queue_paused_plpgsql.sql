-- The fetch's paused-queue check (`queue_paused`, migration
-- `20261207000000`; docs/switches.md "Pausing a queue") in PL/pgSQL, same
-- rule, same signature. As LANGUAGE sql it was not inlined: a function
-- called in a LIMIT clause with a sub-select in its body is executed by the
-- SQL-function executor, which parses, analyses and plans that body again
-- in every statement that calls it. At 440 requests/s that was 4 % of
-- Postgres's CPU (`perf`, README "Performance", item 30), and 0.14 ms of an
-- empty fetch's 0.26 ms. PL/pgSQL keeps the body's plan per connection.
CREATE OR REPLACE FUNCTION queue_paused(p_queue text)
RETURNS boolean
LANGUAGE plpgsql
STABLE
AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM public.queue_pauses WHERE queue = p_queue);
END
$$;
