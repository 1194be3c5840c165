-- Prototype own fleet queue, tested on PG 15.18 in the procrastinate spike (2026-12-03). Apply as the schema owner.
CREATE SCHEMA fleet AUTHORIZATION backstop_owner;
REVOKE ALL ON SCHEMA fleet FROM PUBLIC;
CREATE TABLE fleet.agents (name text PRIMARY KEY, role name UNIQUE NOT NULL);
CREATE TABLE fleet.jobs (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  agent text NOT NULL REFERENCES fleet.agents(name),
  kind text NOT NULL, target text NOT NULL, args jsonb NOT NULL DEFAULT '{}',
  schedule_id text, slot timestamptz,                 -- set for scheduled jobs
  state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued','running','succeeded','failed','cancelled')),
  attempt int NOT NULL DEFAULT 0, max_attempts int NOT NULL DEFAULT 3,
  not_before timestamptz NOT NULL DEFAULT now(),
  lease_token uuid, lease_expires timestamptz, heartbeat_at timestamptz,
  progress jsonb, error text, created_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz);
CREATE UNIQUE INDEX jobs_slot_once ON fleet.jobs (schedule_id, slot) WHERE schedule_id IS NOT NULL;   -- once per slot, whoever enqueues
CREATE UNIQUE INDEX jobs_one_running ON fleet.jobs (target) WHERE state = 'running';                 -- never twice at once per target
CREATE INDEX jobs_claimable ON fleet.jobs (agent, not_before, id) WHERE state = 'queued';

CREATE FUNCTION fleet.claim(lease interval DEFAULT '60 s') RETURNS SETOF fleet.jobs
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, fleet AS $$
  UPDATE fleet.jobs j SET state='running', attempt=attempt+1, lease_token=gen_random_uuid(),
         lease_expires=now()+lease, heartbeat_at=now()
  WHERE j.id = (SELECT id FROM fleet.jobs q
                 WHERE q.agent = (SELECT name FROM fleet.agents WHERE role = session_user)
                   AND q.state='queued' AND q.not_before <= now()
                   AND NOT EXISTS (SELECT 1 FROM fleet.jobs r WHERE r.target=q.target AND r.state='running')
                 ORDER BY q.not_before, q.id LIMIT 1 FOR UPDATE SKIP LOCKED)
  RETURNING j.*; $$;
CREATE FUNCTION fleet.heartbeat(job bigint, token uuid, prog jsonb, lease interval DEFAULT '60 s') RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, fleet AS $$
  WITH u AS (UPDATE fleet.jobs SET heartbeat_at=now(), lease_expires=now()+lease, progress=prog
             WHERE id=job AND lease_token=token AND state='running' AND lease_expires > now()
               AND agent = (SELECT name FROM fleet.agents WHERE role = session_user) RETURNING 1)
  SELECT EXISTS (SELECT 1 FROM u); $$;          -- false => lease lost: agent must stop the work (self-fence)
CREATE FUNCTION fleet.finish(job bigint, token uuid, ok boolean, err text DEFAULT NULL) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, fleet AS $$
  WITH u AS (UPDATE fleet.jobs SET state = CASE WHEN ok THEN 'succeeded'
                                           WHEN attempt < max_attempts THEN 'queued' ELSE 'failed' END,
             not_before = now() + interval '30 s' * attempt, error = err, lease_token = NULL, finished_at = now()
             WHERE id=job AND lease_token=token AND state='running'
               AND agent = (SELECT name FROM fleet.agents WHERE role = session_user) RETURNING 1)
  SELECT EXISTS (SELECT 1 FROM u); $$;
-- run by the scheduler (any instance; SKIP LOCKED makes concurrent reapers harmless)
CREATE FUNCTION fleet.reap() RETURNS SETOF bigint LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, fleet AS $$
  UPDATE fleet.jobs SET state = CASE WHEN attempt < max_attempts THEN 'queued' ELSE 'failed' END,
         error = 'agent lost: no heartbeat since ' || heartbeat_at, lease_token = NULL,
         not_before = now() + interval '30 s' * attempt
  WHERE id IN (SELECT id FROM fleet.jobs WHERE state='running' AND lease_expires < now() - interval '10 s'
               FOR UPDATE SKIP LOCKED) RETURNING id; $$;
CREATE FUNCTION fleet.notify_agent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('backstop_agent_' || NEW.agent, ''); RETURN NEW; END $$;
CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE OF state ON fleet.jobs FOR EACH ROW WHEN (NEW.state='queued')
  EXECUTE FUNCTION fleet.notify_agent();
REVOKE ALL ON FUNCTION fleet.claim(interval), fleet.heartbeat(bigint,uuid,jsonb,interval), fleet.finish(bigint,uuid,boolean,text), fleet.reap() FROM PUBLIC;
-- as superuser: CREATE ROLE backstop_agent NOLOGIN; GRANT backstop_agent TO <each agent role>;
GRANT USAGE ON SCHEMA fleet TO backstop_agent;
GRANT EXECUTE ON FUNCTION fleet.claim(interval), fleet.heartbeat(bigint,uuid,jsonb,interval), fleet.finish(bigint,uuid,boolean,text) TO backstop_agent;
