#!/bin/bash
# Lab self-test: the guest boots with systemd as PID 1 and runs the lab unit.
# vm: moor=no systemd=1 timeout=180
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
lab_assert_eq "$(cat /proc/1/comm)" systemd "PID 1"
lab_wait_for 30 "systemd running or degraded" sh -c 'systemctl is-system-running | grep -Eq "running|degraded|starting"'
lab_step "systemd is PID 1: $(systemctl is-system-running || true)"
systemd-analyze 2>/dev/null || true
systemd-analyze blame 2>/dev/null | head -n 15 || true
systemctl --failed --no-pager || true
