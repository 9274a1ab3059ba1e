#!/usr/bin/env bash
# Install dicom-ai and what it needs on a fresh Debian 12 machine.
#   deploy/install-debian.sh          the node (DCMTK for the modality side, Orthanc as a demo PACS)
#   deploy/install-debian.sh --test   the same plus the test tools (dicom3tools' dciodvfy, pytest,
#                                     Node.js with the viewer libraries of tests/viewers, PostgreSQL,
#                                     Redis, psycopg and Celery: the tests start their own servers)
#   deploy/install-debian.sh --postgres   the node with the PostgreSQL driver (psycopg), for an
#                                     index on a PostgreSQL server (node.database_url)
#   deploy/install-debian.sh --scale-out  the node or a worker host with psycopg and Celery
#                                     (executor "celery", see the README's "Scaling out")
# Python packages go into the virtualenv .venv of the repository (created if missing; Debian's
# own Python refuses system-wide pip installs), pinned by constraints.txt (torch 2.13.0 CPU).
# Afterwards: .venv/bin/dicom-ai ...
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PY="${PYTHON:-python3}"

apt_pkgs=(dcmtk orthanc)
extra="."
if [ "${1:-}" = "--test" ]; then
  apt_pkgs+=(dicom3tools openssl orthanc-dicomweb chromium chromium-driver postgresql redis-server)
  # Node.js and npm: Debian's packages, unless the commands are there already (a Node.js
  # from elsewhere brings its own npm, which Debian's npm package would collide with)
  command -v node >/dev/null 2>&1 || apt_pkgs+=(nodejs)
  command -v npm >/dev/null 2>&1 || apt_pkgs+=(npm)
  extra=".[test]"
elif [ "${1:-}" = "--postgres" ]; then
  extra=".[postgres]"
elif [ "${1:-}" = "--scale-out" ]; then
  extra=".[postgres,celery]"
fi
if ! "$PY" -m venv --help >/dev/null 2>&1; then apt_pkgs+=(python3-venv); fi

missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  # the Debian orthanc, postgresql and redis-server packages start system services (4242/8042,
  # 5432, 6379) where they can; dicom-ai's demo and tests start their own Orthanc, PostgreSQL and
  # Redis on free loopback ports
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "pip install -c constraints.txt -e '$extra' into .venv"
.venv/bin/python -m pip install -q -c constraints.txt -e "$extra"
if [ "${1:-}" = "--test" ]; then
  # the npm packages OHIF's viewers use, pinned by tests/viewers/package-lock.json
  echo "npm ci into tests/viewers/node_modules"
  npm ci --prefix tests/viewers --no-audit --no-fund --loglevel=error >/dev/null
fi
.venv/bin/dicom-ai --help >/dev/null
echo "dicom-ai installed: .venv/bin/dicom-ai"
