-- tongban's PostgreSQL roles, for a development or compose server (dev passwords!).
-- Run once as a superuser in tongban's database; running it again changes nothing.
-- deploy/local/postgres.sh runs it on the embedded server, deploy/compose.yaml mounts it
-- into the postgres image's /docker-entrypoint-initdb.d/. For a production server create
-- the same roles with passwords of your own (README, "PostgreSQL roles").
--
--   tongban_owner   owns the four service schemas and runs the migrations (`tongban migrate`):
--                   NOSUPERUSER, may create schemas in this database, nothing else.
--   tongban_<name>  what service <name> logs in as at run time: NOSUPERUSER NOCREATEROLE
--                   NOCREATEDB, not the owner of anything; `tongban migrate` grants it its own
--                   schema only (rows of its tables, INSERT and SELECT on its audit table).
--                   So it can neither switch the audit trigger off (ALTER TABLE needs the
--                   owner, session_replication_role a superuser) nor read another service.
DO $roles$
DECLARE
  name text;
BEGIN
  FOREACH name IN ARRAY ARRAY['tongban_owner', 'tongban_intake', 'tongban_routing',
                              'tongban_approval', 'tongban_delivery'] LOOP
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
      EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', name, 'tongban');
    END IF;
    EXECUTE format('ALTER ROLE %I NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS',
                   name);
    -- The server log never carries what a refused statement held (ID numbers, phones):
    -- ERROR lines (their message can quote the value) are not logged, nor the statement,
    -- its parameters, DETAIL or CONTEXT. Set for the role too, so it holds on a server whose
    -- postgresql.conf is not ours; only a superuser can change these settings.
    EXECUTE format('ALTER ROLE %I SET log_min_messages = log', name);
    EXECUTE format('ALTER ROLE %I SET log_min_error_statement = panic', name);
    EXECUTE format('ALTER ROLE %I SET log_error_verbosity = terse', name);
    EXECUTE format('ALTER ROLE %I SET log_statement = none', name);
    EXECUTE format('ALTER ROLE %I SET log_min_duration_statement = -1', name);
    EXECUTE format('ALTER ROLE %I SET log_parameter_max_length = 0', name);
    EXECUTE format('ALTER ROLE %I SET log_parameter_max_length_on_error = 0', name);
  END LOOP;
  EXECUTE format('GRANT CONNECT, CREATE, TEMPORARY ON DATABASE %I TO tongban_owner',
                 current_database());
END
$roles$;
