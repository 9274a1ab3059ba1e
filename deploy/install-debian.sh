#!/usr/bin/env bash
# Install dicom-ai and what it needs on a fresh Debian 12 machine.
#   deploy/install-debian.sh          the node (DCMTK for the modality side, Orthanc as a demo PACS)
#   deploy/install-debian.sh --test   the same plus the test tools (dicom3tools' dciodvfy, pytest)
# Python packages go into the current Python environment (a virtualenv if one is active),
# pinned by constraints.txt (torch 2.13.0 CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
PY="${PYTHON:-python3}"

apt_pkgs=(dcmtk orthanc)
extra="."
if [ "${1:-}" = "--test" ]; then
  apt_pkgs+=(dicom3tools)
  extra=".[test]"
fi

missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  # the Debian orthanc package starts a system service on 4242/8042 where it can; tests use their own ports
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

"$PY" -m pip install -q -c constraints.txt -e "$extra"
echo "dicom-ai installed: $("$PY" -m dicom_ai.cli --help >/dev/null && echo ok)"
