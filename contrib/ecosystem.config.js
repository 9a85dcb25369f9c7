// PM2 process file for rebreak-idle: a drop-in for the Node daemon's ecosystem.config.js.
//
//   pm2 start contrib/ecosystem.config.js       # with the settings in the environment
//   pm2 stop rebreak-idle                        # graceful: LOGOUT on every session, exit 0
//   pm2 restart rebreak-idle --update-env        # after the secret manager changed a value
//
// Nothing secret lives here. DATABASE_URL, ADMIN_SECRET, ENCRYPTION_KEY and every other
// setting (README, "Configuration") come from the environment of the `pm2 start` command,
// exactly as with the Node daemon: the operator's secret manager injects them there.
//
// Stop: PM2 sends SIGINT (or PM2_KILL_SIGNAL, e.g. SIGTERM, if the PM2 daemon was started
// with it); rebreak-idle treats SIGINT and SIGTERM alike (DONE + LOGOUT on every session,
// buffered writes flushed, in-flight scans finished or abandoned) and exits 0. PM2 sends
// SIGKILL after kill_timeout, so it is set above REBREAK_SHUTDOWN_TIMEOUT: the whole stop
// (sessions, final write, lease release) shares that one timeout, plus 5 s for the process
// to start stopping and to exit.
//
// REBREAK_IDLE_VENV (not a secret; default /opt/rebreak-idle/venv, as in the systemd unit)
// is the virtualenv the package was installed into with `pip install .`.
//
// Several replicas on one host (docs/replicas.md): REBREAK_IDLE_INSTANCES=N (default 1)
// runs N processes, rebreak-idle-0 ... rebreak-idle-<N-1>, all in the PM2 namespace
// "rebreak-idle" (so `pm2 stop rebreak-idle` / `pm2 logs rebreak-idle` still address them
// all). With N > 1 each instance gets REBREAK_LEASES=on, its own stable replica id
// (<REBREAK_REPLICA_ID or hostname>-<i>: a restarted instance renews its own leases) and,
// when REBREAK_STATUS_ENDPOINT is a tcp:<port> endpoint, the port <port> + i. With N = 1
// the app is the single process "rebreak-idle", exactly as before.
//
//   REBREAK_IDLE_INSTANCES=3 REBREAK_STATUS_ENDPOINT=tcp:9464:interface=127.0.0.1 \
//     pm2 start contrib/ecosystem.config.js      # status on 9464, 9465, 9466
//
// File descriptors: each session holds one. The daemon raises its soft RLIMIT_NOFILE to the
// hard limit at start (as Node.js does), so what counts is the hard limit of the PM2 daemon,
// which every instance inherits: raise it where PM2 itself is started (`ulimit -Hn 65536`
// before `pm2 start`/`pm2 resurrect`, or `LimitNOFILE=65536` in the unit `pm2 startup`
// writes). The start-up log line says the limit in force (docs/operations.md).

"use strict";

const os = require("os");
const path = require("path");

const venv = process.env.REBREAK_IDLE_VENV || "/opt/rebreak-idle/venv";
const shutdownSeconds = Number(process.env.REBREAK_SHUTDOWN_TIMEOUT || 10);
const wanted = Math.floor(Number(process.env.REBREAK_IDLE_INSTANCES || 1));
const instances = Number.isFinite(wanted) && wanted > 1 ? wanted : 1;

// What differs per instance when several run on this host (see above).
function replicaEnv(i) {
  if (instances === 1) return {};
  const env = {
    REBREAK_LEASES: "on",
    REBREAK_REPLICA_ID: `${process.env.REBREAK_REPLICA_ID || os.hostname()}-${i}`,
  };
  const status = process.env.REBREAK_STATUS_ENDPOINT;
  if (status) {
    env.REBREAK_STATUS_ENDPOINT = status.replace(
      /^tcp:(\d+)/, (all, port) => (Number(port) === 0 ? all : `tcp:${Number(port) + i}`));
  }
  return env;
}

function app(i) {
  return {
    name: instances === 1 ? "rebreak-idle" : `rebreak-idle-${i}`,
    namespace: "rebreak-idle",
    script: path.join(venv, "bin", "twist"),
    args: ["--log-format=text", "rebreak-idle"],
    interpreter: "none", // twist is the program itself, not a Node.js script
    exec_mode: "fork", // one process per app; replicas: REBREAK_IDLE_INSTANCES (above)
    instances: 1,
    cwd: venv,

    // Restarts: on any exit PM2 did not ask for, with a growing delay (100 ms, then x1.5
    // up to PM2's cap of 15 s; back to 100 ms after 30 s of uptime). Exit status 78 is a
    // configuration error (the log names the variable): restarting cannot fix it, so PM2
    // leaves the process down (`pm2 ls` may still show it as "waiting restart").
    autorestart: true,
    exp_backoff_restart_delay: 100,
    stop_exit_codes: [78],
    min_uptime: "10s",
    max_restarts: 16,

    // Graceful stop (see above).
    kill_timeout: (shutdownSeconds + 5) * 1000,
    treekill: true,
    shutdown_with_message: false,

    // Log lines unchanged: our lines carry their own timestamp, so PM2 adds none
    // (`time: false`, no log_date_format); stdout and stderr of each app go to one file each
    // (~/.pm2/logs/<name>-out.log, -error.log; `pm2 logs rebreak-idle` shows them all).
    time: false,
    merge_logs: true,

    // Every setting from the environment of `pm2 start` (nothing set here but what differs
    // per instance, nothing filtered out); PYTHONUNBUFFERED so that each line reaches the
    // log at once.
    filter_env: false,
    env: {
      PYTHONUNBUFFERED: "1",
      ...replicaEnv(i),
    },
  };
}

module.exports = {
  apps: Array.from({ length: instances }, (_, i) => app(i)),
};
