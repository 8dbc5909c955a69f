# shellcheck shell=bash
# lab.sh — shared functions for everything that runs inside a lab guest (scenarios,
# server helpers) and for the Vagrant boxes that reuse the same helpers.
#
# Source it, do not execute it:   . "$LAB_DIR/lib/lab.sh"
#
# What it gives you:
#   lab_log MSG…            timestamped line on stderr ("[ 12.34s] MSG"), time since lab.sh was loaded
#   lab_step MSG…           same, marked as a step (grep '==>' in a log to see the outline)
#   lab_die MSG…            log, then exit 1 (fails the scenario loudly)
#   lab_run CMD…            log the command, run it, die with its exit status and the command on failure
#   lab_wait_for SECS WHAT CMD…
#                           poll CMD (every 0.1 s, growing to 1 s) until it succeeds; die after SECS
#                           naming WHAT and the last output of CMD
#   lab_with_deadline SECS CMD…
#                           run CMD under `timeout -k 5`; a hung mount/stat cannot stall the lab
#   lab_assert_eq GOT WANT WHAT, lab_assert_file_eq FILE WANT, lab_assert_mounted DIR [FSTYPE],
#   lab_assert_not_mounted DIR, lab_assert_cmd_fails CMD…
#   lab_on_exit CMD…        push a cleanup command (run in reverse order on exit, errors ignored)
#   lab_artifact FILE…      copy files into the scenario's result directory (kept on the host)
#   lab_pid_alive PID, lab_pid_gone PID
#                           whether PID runs (a zombie or a vanished process is gone)
#   lab_require_root, lab_modprobe MOD…
#
# Environment (set by the guest runner; sane defaults so the helpers also work on a
# plain Debian machine such as the Vagrant boxes):
#   LAB_DIR   the vm-tests directory (read-only in the guest)
#   LAB_OUT   writable directory whose files come back to the host (default /tmp/lab-out)
#   LAB_STATE scratch directory for servers' backing files and configs (default /var/tmp/lab)

# Guard: sourcing twice is harmless.
if [[ -n "${LAB_SH_LOADED:-}" ]]; then return 0; fi
LAB_SH_LOADED=1

LAB_DIR=${LAB_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
LAB_OUT=${LAB_OUT:-/tmp/lab-out}
LAB_STATE=${LAB_STATE:-/var/tmp/lab}
export LAB_DIR LAB_OUT LAB_STATE
mkdir -p "$LAB_OUT" "$LAB_STATE"

LAB_T0=${LAB_T0:-$(date +%s.%N)}
export LAB_T0

_lab_elapsed() { awk -v a="$(date +%s.%N)" -v b="$LAB_T0" 'BEGIN { printf "%6.2f", a - b }'; }

lab_log()  { printf '[%ss] %s\n' "$(_lab_elapsed)" "$*" >&2; }
lab_step() { printf '[%ss] ==> %s\n' "$(_lab_elapsed)" "$*" >&2; }
lab_die()  { printf '[%ss] FAIL: %s\n' "$(_lab_elapsed)" "$*" >&2; trap - ERR; exit 1; }

# One read of /proc/PID/stat: a process that exits between two reads (an -e test, then
# the stat file) must count as gone, never as alive. The state follows the last ")"
# because comm may hold spaces and parentheses.
lab_pid_alive() {
  local st
  st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st##*) }
  [[ -n $st && ${st:0:1} != Z ]]
}
lab_pid_gone() { ! lab_pid_alive "$1"; }

lab_require_root() { [[ $(id -u) -eq 0 ]] || lab_die "must run as root"; }

lab_run() {
  lab_log "+ $*"
  local rc=0
  "$@" || rc=$?
  [[ $rc -eq 0 ]] || lab_die "command failed (exit $rc): $*"
}

lab_with_deadline() {
  local secs=$1; shift
  timeout -k 5 "$secs" "$@"
}

# lab_wait_for SECS WHAT CMD… — the one way to wait for anything. Polling starts fast
# (0.1 s, servers are often ready within a second) and backs off to 1 s so a slow
# TCG guest is not hammered.
lab_wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline delay=0.1 out=""
  deadline=$(awk -v n="$(date +%s.%N)" -v s="$secs" 'BEGIN { printf "%.3f", n + s }')
  while :; do
    if out=$("$@" 2>&1); then return 0; fi
    if awk -v n="$(date +%s.%N)" -v d="$deadline" 'BEGIN { exit !(n > d) }'; then
      lab_log "last output of '$*':"
      printf '%s\n' "$out" | tail -n 20 >&2
      lab_die "timed out after ${secs}s waiting for: $what"
    fi
    sleep "$delay"
    delay=$(awk -v d="$delay" 'BEGIN { d *= 2; if (d > 1) d = 1; print d }')
  done
}

lab_assert_eq() {
  local got=$1 want=$2 what=${3:-value}
  [[ "$got" == "$want" ]] || lab_die "$what: got '$got', want '$want'"
}

lab_assert_file_eq() {
  local file=$1 want=$2 got
  got=$(lab_with_deadline 20 cat -- "$file") || lab_die "cannot read $file"
  [[ "$got" == "$want" ]] || lab_die "$file: got '$got', want '$want'"
}

# Mount-table checks read /proc/self/mountinfo only: never stat() a possibly dead mount.
_lab_mount_fstype() {
  awk -v d="$1" '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($5 == d) t = $(i + 1); break } } END { if (t != "") print t; else exit 1 }' /proc/self/mountinfo
}
lab_assert_mounted() {
  local dir=$1 want=${2:-} got
  got=$(_lab_mount_fstype "$dir") || lab_die "$dir is not a mount point"
  [[ -z "$want" || "$got" == "$want" ]] || lab_die "$dir is mounted as $got, want $want"
}
lab_assert_not_mounted() {
  local got
  if got=$(_lab_mount_fstype "$1"); then lab_die "$1 is still mounted ($got)"; fi
}
lab_assert_cmd_fails() {
  if "$@" >/dev/null 2>&1; then lab_die "expected failure, but succeeded: $*"; fi
}

# Cleanups run in reverse order at exit, so a scenario that fails half-way still
# unmounts and logs out (keeps the guest's logs clean, and matters on Vagrant boxes).
LAB_CLEANUPS=()
lab_on_exit() { LAB_CLEANUPS+=("$*"); }
_lab_run_cleanups() {
  local rc=$? i
  for ((i = ${#LAB_CLEANUPS[@]} - 1; i >= 0; i--)); do
    eval "${LAB_CLEANUPS[i]}" >/dev/null 2>&1 || true
  done
  return $rc
}
trap _lab_run_cleanups EXIT
# set -e exits silently; say which command failed and where, so a red scenario
# explains itself in its first lines of output.
_lab_on_err() {
  local rc=$?
  printf '[%ss] FAIL: exit %s from `%s` at %s:%s\n' "$(_lab_elapsed)" "$rc" "$BASH_COMMAND" \
    "${BASH_SOURCE[1]:-?}" "${BASH_LINENO[0]:-?}" >&2
}
set -E
trap _lab_on_err ERR

lab_artifact() {
  local f
  for f in "$@"; do [[ -e "$f" ]] && cp -a -- "$f" "$LAB_OUT/" 2>/dev/null || true; done
}

lab_modprobe() {
  local m
  for m in "$@"; do modprobe "$m" || lab_die "modprobe $m failed (is the guest running Debian's kernel?)"; done
}
