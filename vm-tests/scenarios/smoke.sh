#!/bin/bash
# moor runs in the guest and `moor demo` passes there.
# vm: timeout=300
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
. "$LAB_DIR/lib/moor-node.sh"

lab_require_moor
lab_run "$MOOR" version
lab_run "$MOOR" --help >/dev/null
lab_step "moor $("$MOOR" version | head -n 1) runs on $(uname -r)"
lab_run lab_with_deadline 240 "$MOOR" demo
lab_step "moor demo passed"
