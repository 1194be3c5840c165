"""The fleet's job queue in the PostgreSQL catalog (schema ``fleet``): agents, their jobs, and the only
functions an agent's role may call.

Why our own queue and not procrastinate: docs/fleet-queue-evaluation.md.
In short, procrastinate trusts every worker (its functions run with the
caller's rights, so agents would need write grants on shared tables, and
one agent could requeue another's running job), and finishing a job checks
no per-attempt token, so a worker cut off from the database can run a job
twice. Here agents hold no table privileges at all: they call
``claim``/``heartbeat``/``finish``/``beat``/``request``, which run as the catalog's
owner, find the caller's agent by ``session_user``, and need the lease
token of the attempt. ``reap`` (the schedulers') fails or requeues a job
whose lease lapsed; an agent whose heartbeat returns false stops the work.
"""

from __future__ import annotations

AGENT_GROUP = "backstop_agent"
# Every advisory lock a role could take on a bigint key (the catalog's write lock, the daemons' leader lock):
# executable by PUBLIC out of the box, so an agent's role could hold either and stall the fleet until an
# administrator revokes them in the control-plane database (README, "A fleet", step 1).
ADVISORY_LOCK_FUNCTIONS = tuple(f"pg_{t}advisory_{x}lock{s}(bigint)" for t in ("", "try_") for x in ("", "xact_")
                                for s in ("", "_shared"))
AGENT_CHANNEL_PREFIX = "backstop_agent_"

FLEET_SCHEMA = f"""
CREATE SCHEMA IF NOT EXISTS fleet;
REVOKE ALL ON SCHEMA fleet FROM PUBLIC;
CREATE TABLE fleet.agents (
    name text PRIMARY KEY,
    role name UNIQUE NOT NULL,
    host text,
    version text,
    -- The databases an administrator let this agent serve (jobs are routed by these, never by what it reports).
    databases jsonb NOT NULL DEFAULT '[]',
    reported_databases jsonb NOT NULL DEFAULT '[]',
    registered_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz
);
CREATE TABLE fleet.jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent text NOT NULL REFERENCES fleet.agents (name),
    kind text NOT NULL,
    target text NOT NULL,
    args jsonb NOT NULL DEFAULT '{{}}',
    schedule text,
    slot timestamptz,
    state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempt integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 3,
    not_before timestamptz NOT NULL DEFAULT now(),
    retry_delay interval NOT NULL DEFAULT '30 s',
    reason text,
    lease_token uuid,
    lease_expires timestamptz,
    heartbeat_at timestamptz,
    progress jsonb,
    result jsonb,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
-- A scheduled slot is queued once, whichever scheduler gets there first.
CREATE UNIQUE INDEX jobs_slot_once ON fleet.jobs (schedule, slot) WHERE schedule IS NOT NULL;
-- Never two running jobs on one database.
CREATE UNIQUE INDEX jobs_one_running ON fleet.jobs (target) WHERE state = 'running';
CREATE INDEX jobs_claimable ON fleet.jobs (agent, not_before, id) WHERE state = 'queued';

CREATE FUNCTION fleet.claim(lease interval DEFAULT '60 s') RETURNS SETOF fleet.jobs
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, fleet AS $$
    UPDATE fleet.jobs j SET state = 'running', attempt = attempt + 1, lease_token = gen_random_uuid(),
           lease_expires = now() + lease, heartbeat_at = now()
    WHERE j.id = (SELECT id FROM fleet.jobs q
                  WHERE q.agent = (SELECT name FROM fleet.agents WHERE role = session_user)
                    AND q.state = 'queued' AND q.not_before <= now()
                    AND NOT EXISTS (SELECT 1 FROM fleet.jobs r WHERE r.target = q.target AND r.state = 'running')
                  ORDER BY q.not_before, q.id LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING j.*
$$;
CREATE FUNCTION fleet.heartbeat(job bigint, token uuid, prog jsonb, lease interval DEFAULT '60 s') RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, fleet AS $$
    WITH u AS (UPDATE fleet.jobs SET heartbeat_at = now(), lease_expires = now() + lease, progress = prog
               WHERE id = job AND lease_token = token AND state = 'running' AND lease_expires > now()
                 AND agent = (SELECT name FROM fleet.agents WHERE role = session_user) RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM u)
$$;
CREATE FUNCTION fleet.finish(job bigint, token uuid, ok boolean, err text DEFAULT NULL, res jsonb DEFAULT NULL)
RETURNS boolean LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, fleet AS $$
    WITH u AS (UPDATE fleet.jobs SET state = CASE WHEN ok THEN 'succeeded'
                                                  WHEN attempt < max_attempts THEN 'queued' ELSE 'failed' END,
                      not_before = now() + retry_delay * attempt, error = err, result = res, lease_token = NULL,
                      finished_at = CASE WHEN ok OR attempt >= max_attempts THEN now() END
               WHERE id = job AND lease_token = token AND state = 'running'
                 AND agent = (SELECT name FROM fleet.agents WHERE role = session_user) RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM u)
$$;
CREATE FUNCTION fleet.beat(host text, version text, databases jsonb) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, fleet AS $$
    WITH u AS (UPDATE fleet.agents a SET host = beat.host, version = beat.version,
                      reported_databases = beat.databases,
                      heartbeat_at = now()
               WHERE a.role = session_user RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM u)
$$;
-- An agent asks for work on its own databases (a threshold fired): queued for itself, unless that kind of job
-- is already queued or running there.
CREATE FUNCTION fleet.request(kind text, target text, why text, args jsonb DEFAULT '{{}}') RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, fleet AS $$
    INSERT INTO fleet.jobs (agent, kind, target, args, reason)
    SELECT a.name, request.kind, request.target, request.args, request.why FROM fleet.agents a
    -- Only backups: anything else an agent could ask for itself (a restore over a database) needs an operator.
    WHERE a.role = session_user AND a.databases ? request.target AND request.kind = 'backup'
      AND NOT EXISTS (SELECT 1 FROM fleet.jobs j WHERE j.target = request.target AND j.kind = request.kind
                      AND j.state IN ('queued', 'running'))
    RETURNING id
$$;
-- The schedulers' (any number at once: SKIP LOCKED): a job whose lease lapsed is requeued or failed.
CREATE FUNCTION fleet.reap(grace interval DEFAULT '10 s') RETURNS SETOF bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, fleet AS $$
    UPDATE fleet.jobs SET state = CASE WHEN attempt < max_attempts THEN 'queued' ELSE 'failed' END,
           error = 'the agent stopped reporting (no heartbeat since ' || heartbeat_at || ')', lease_token = NULL,
           not_before = now() + retry_delay * attempt,
           finished_at = CASE WHEN attempt >= max_attempts THEN now() END
    WHERE id IN (SELECT id FROM fleet.jobs WHERE state = 'running' AND lease_expires < now() - grace
                 FOR UPDATE SKIP LOCKED)
    RETURNING id
$$;
CREATE FUNCTION fleet.notify_agent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{AGENT_CHANNEL_PREFIX}' || NEW.agent, '');
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_wake_agent AFTER INSERT OR UPDATE OF state ON fleet.jobs FOR EACH ROW
    WHEN (NEW.state = 'queued') EXECUTE FUNCTION fleet.notify_agent();
CREATE TRIGGER backstop_notify AFTER INSERT OR UPDATE OR DELETE ON fleet.jobs FOR EACH STATEMENT
    EXECUTE FUNCTION backstop_notify();
CREATE TRIGGER backstop_notify AFTER INSERT OR UPDATE OR DELETE ON fleet.agents FOR EACH STATEMENT
    EXECUTE FUNCTION backstop_notify();
REVOKE ALL ON FUNCTION fleet.claim(interval), fleet.heartbeat(bigint, uuid, jsonb, interval),
    fleet.finish(bigint, uuid, boolean, text, jsonb), fleet.beat(text, text, jsonb), fleet.reap(interval),
    fleet.request(text, text, text, jsonb) FROM PUBLIC;
-- The group every agent's login role is in: it may call the agent's four functions and nothing else. Made
-- here when the catalog's owner may create roles; otherwise by an administrator (README, "A fleet").
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{AGENT_GROUP}') THEN
        BEGIN
            CREATE ROLE {AGENT_GROUP} NOLOGIN;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'create the role {AGENT_GROUP} (NOLOGIN) as an administrator, then rerun backstop';
            RETURN;
        END;
    END IF;
    GRANT USAGE ON SCHEMA fleet TO {AGENT_GROUP};
    GRANT EXECUTE ON FUNCTION fleet.claim(interval), fleet.heartbeat(bigint, uuid, jsonb, interval),
        fleet.finish(bigint, uuid, boolean, text, jsonb), fleet.beat(text, text, jsonb),
        fleet.request(text, text, text, jsonb) TO {AGENT_GROUP};
END $$;
"""

# v4: what an agent's engine recorded while running a job (its job events, its restores' timings), handed to
# the control plane so the fleet's KPIs count work done on agents. The agent writes only a report on its own
# running attempt (lease token checked); the catalog's owner files it into jobs/job_events/restores
# (core/fleet/records.py), checking it refers to nothing but that attempt.
FLEET_REPORTS = f"""
CREATE TABLE fleet.reports (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job bigint NOT NULL REFERENCES fleet.jobs (id),
    attempt integer NOT NULL,
    agent text NOT NULL REFERENCES fleet.agents (name),
    records jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    recorded_at timestamptz,
    UNIQUE (job, attempt)
);
CREATE INDEX reports_unrecorded ON fleet.reports (id) WHERE recorded_at IS NULL;
CREATE FUNCTION fleet.report(job bigint, token uuid, recs jsonb) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, fleet AS $$
    WITH r AS (INSERT INTO fleet.reports (job, attempt, agent, records)
               SELECT j.id, j.attempt, j.agent, recs FROM fleet.jobs j
               WHERE j.id = report.job AND j.lease_token = token AND j.state = 'running'
                 AND j.agent = (SELECT name FROM fleet.agents WHERE role = session_user)
                 -- a report is a job's history, not a store: a megabyte is far beyond any real one
                 AND octet_length(recs::text) < 1048576
               ON CONFLICT (job, attempt) DO UPDATE SET records = EXCLUDED.records
               RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM r)
$$;
REVOKE ALL ON FUNCTION fleet.report(bigint, uuid, jsonb) FROM PUBLIC;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{AGENT_GROUP}') THEN
        GRANT EXECUTE ON FUNCTION fleet.report(bigint, uuid, jsonb) TO {AGENT_GROUP};
    END IF;
END $$;
"""
