#!/usr/bin/env bash
# Fetches the current peers, Prometheus 3 (with promtool) and VictoriaMetrics (with vmagent),
# from Debian's unstable archive into a per-machine cache outside the clone, without touching
# the system's apt sources: apt-get runs with a sources list, package lists and a package cache
# of its own, downloads the .deb files and unpacks them with dpkg -x. Debian 12's own
# prometheus 2.42 and vmagent 1.79 (installed by setup.sh) stay for the Prometheus 2 mode.
#
# The versions are not pinned (the archive moves on), but anything older than Prometheus 3.5
# or VictoriaMetrics 1.140 is refused. On success it writes $UPLINK_PEERS/peers.env, which
# deploy/dev/env.sh sources (UPLINK_PROMETHEUS3, UPLINK_PROMTOOL3, UPLINK_VMAGENT,
# UPLINK_VICTORIA_METRICS, and the versions), and prints the versions found.
#
# Usage: deploy/dev/peers.sh [--refresh]   (--refresh fetches again even when cached; a cache
# older than 30 days is refreshed anyway, keeping the old one if the archive cannot be reached).
set -euo pipefail
cache="${UPLINK_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/uplink/peers}"
min_prometheus=3.5
min_victoria=1.140
env_file="$cache/peers.env"
refresh=0
[[ "${1:-}" == "--refresh" ]] && refresh=1
if [[ $refresh -eq 0 && -f "$env_file" && -z "$(find "$env_file" -mtime +30)" ]]; then
  . "$env_file"
  if [[ -x "${UPLINK_PROMETHEUS3:-}" && -x "${UPLINK_VMAGENT:-}" ]]; then
    echo "peers: prometheus $UPLINK_PROMETHEUS3_VERSION, victoria-metrics $UPLINK_VICTORIA_METRICS_VERSION (cached in $cache)"
    exit 0
  fi
fi

# version_ge A B: A >= B by dpkg's ordering.
version_ge() { dpkg --compare-versions "$1" ge "$2"; }

apt_dir="$cache/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$cache/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian unstable main" \
  >"$apt_dir/sources.list"
apt_opts=(
  -o "Dir::Etc::sourcelist=$apt_dir/sources.list"
  -o "Dir::Etc::sourceparts=-"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir/cache"
  -o "APT::Sandbox::User=root"
  -o "Debug::NoLocking=1"
)
if ! apt-get "${apt_opts[@]}" -qq update >"$apt_dir/update.log" 2>&1; then
  if [[ -f "$env_file" ]]; then
    echo "peers: cannot reach Debian's archive (see $apt_dir/update.log); keeping the cached peers" >&2
    exit 0
  fi
  echo "peers: cannot reach Debian's archive (see $apt_dir/update.log)" >&2
  exit 1
fi
candidate() { apt-cache "${apt_opts[@]}" show "$1" 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -1; }
prom_version="$(candidate prometheus)"
vm_version="$(candidate victoria-metrics)"
upstream() { local v="${1#*:}"; echo "${v%%+*}"; }
if [[ -z "$prom_version" ]] || ! version_ge "$(upstream "$prom_version")" "$min_prometheus"; then
  echo "peers: Debian unstable offers prometheus '${prom_version:-none}', below $min_prometheus: refused" >&2
  exit 1
fi
if [[ -z "$vm_version" ]] || ! version_ge "$(upstream "$vm_version")" "$min_victoria"; then
  echo "peers: Debian unstable offers victoria-metrics '${vm_version:-none}', below $min_victoria: refused" >&2
  exit 1
fi

root="$cache/root-$(upstream "$prom_version")-$(upstream "$vm_version")"
if [[ ! -x "$root/usr/bin/prometheus" || ! -x "$root/usr/bin/vmagent" || ! -x "$root/usr/bin/promtool" ]]; then
  rm -rf "$cache/debs"/*.deb "$root.tmp"
  (cd "$cache/debs" && apt-get "${apt_opts[@]}" -qq download prometheus promtool victoria-metrics \
    >"$apt_dir/download.log" 2>&1) || {
    echo "peers: download failed (see $apt_dir/download.log)" >&2
    exit 1
  }
  mkdir -p "$root.tmp"
  for deb in "$cache/debs"/*.deb; do dpkg -x "$deb" "$root.tmp"; done
  rm -rf "$root" && mv "$root.tmp" "$root"
fi

cat >"$env_file.tmp" <<EOF
UPLINK_PROMETHEUS3=$root/usr/bin/prometheus
UPLINK_PROMTOOL3=$root/usr/bin/promtool
UPLINK_VMAGENT=$root/usr/bin/vmagent
UPLINK_VICTORIA_METRICS=$root/usr/bin/victoria-metrics
UPLINK_PROMETHEUS3_VERSION=$(upstream "$prom_version")
UPLINK_VICTORIA_METRICS_VERSION=$(upstream "$vm_version")
EOF
mv "$env_file.tmp" "$env_file"
# Older unpacked versions are no longer referenced.
find "$cache" -maxdepth 1 -name 'root-*' ! -path "$root" -exec rm -rf {} +
echo "peers: prometheus $(upstream "$prom_version"), victoria-metrics $(upstream "$vm_version") (Debian unstable, unpacked in $root)"
