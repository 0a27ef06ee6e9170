#!/usr/bin/env bash
# Installs what building, the demo and the tests need on Debian, if missing:
#   clang, libclang-dev  RocksDB's bindings (bindgen needs libclang); clang also builds the
#                        power-loss emulation's LD_PRELOAD library (loadtest/powerloss)
#   prometheus           the real global view (also ships promtool)
#   prometheus-alertmanager  the global alerting (amtool validates its config)
#   openssl              tests that certificates from a user's own PKI work
#   victoria-metrics     a second real remote-write destination (and vmagent, the peer)
#   etcd-server          HA election state shared between gateways
#   chromium             headless, to test the gateway's status page as a browser renders it
# As root it installs them; otherwise it prints the exact command and fails. Debian 12's
# prometheus (2.42) and vmagent (1.79) serve the Prometheus 2 mode; the current peers
# (Prometheus 3, VictoriaMetrics and vmagent) come from deploy/dev/peers.sh, run at the end.
set -euo pipefail
packages=(clang libclang-dev prometheus prometheus-alertmanager openssl victoria-metrics etcd-server chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exec "$(dirname "$0")/peers.sh"
fi
cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if [[ $(id -u) -eq 0 ]]; then
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: missing Debian packages: ${missing[*]}" >&2
  echo "setup: run as root:  sudo sh -c '$cmd'" >&2
  exit 1
fi
exec "$(dirname "$0")/peers.sh"
