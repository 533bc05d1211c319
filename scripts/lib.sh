# Shared by scripts/serve and scripts/test.
VENV="${STOA_VENV:-.venv}"
PY="${PYTHON:-python3}"

say() { printf 'stoa: %s\n' "$*" >&2; }

ensure_venv() {
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "Python 3.11 or newer is needed (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11"
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.stoa-installed" want
  want=$(cat pyproject.toml | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing Python dependencies into $VENV (first run takes a minute)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e '.[test]'
    echo "$want" > "$stamp"
  fi
}

ensure_chromium() {
  if command -v chromium >/dev/null 2>&1; then return; fi
  if [ "$(id -u)" -ne 0 ]; then
    say "Chromium is needed for the browser tests: sudo apt-get install -y chromium"
    exit 1
  fi
  say "installing Debian's Chromium for the browser tests"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_services() {
  # The test fixtures start these too; doing it here first gives clearer messages.
  if ! listening 5432; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
      if [ "$(id -u)" -eq 0 ]; then
        say "installing PostgreSQL"; apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
      else
        say "PostgreSQL is needed: sudo apt-get install -y postgresql"; exit 1
      fi
    fi
    say "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start || true
  fi
  if ! listening 6379; then
    if ! command -v redis-server >/dev/null 2>&1; then
      if [ "$(id -u)" -eq 0 ]; then
        say "installing Redis"; apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
      else
        say "Redis is needed: sudo apt-get install -y redis-server"; exit 1
      fi
    fi
    say "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
  fi
}

ensure_node_clients() {
  # npm node-datachannel (tests/test_outside_clients.py) and axe-core (tests/test_browser_layout.py), pinned by the lock file.
  if ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
      say "Node.js is needed for the outside-client tests: sudo apt-get install -y nodejs npm"
      exit 1
    fi
    say "installing Debian's Node.js for the outside-client tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
  local stamp="tests/node/node_modules/.stoa-installed" want
  want=$(sha256sum tests/node/package-lock.json | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing tests/node (npm ci)"
    (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" > "$stamp"
  fi
}
