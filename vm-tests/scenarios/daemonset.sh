#!/bin/bash
# moor as a DaemonSet, with Debian's containerd: the node image imported; the installer and the daemon run as the DaemonSet runs them (privileged, the host's network and PID namespace, the kubelet dir rshared, the same host mounts); a local and a GlusterFS volume published through the host-installed front end as kubelet execs it; the container killed, then upgraded to a rebuilt image: mounts, data and the FUSE client's pid intact, state rebuilt; a second moor on the same node refused; unmount clean.
# vm: systemd=1 mem=1536 cpus=2 timeout=540
set -euo pipefail
. "$LAB_DIR/lib/lab.sh"
. "$LAB_DIR/lib/moor-node.sh"
. "$LAB_DIR/servers/gluster.sh"

lab_require_root
lab_assert_eq "$(cat /proc/1/comm)" systemd "PID 1"
IMAGES=$LAB_DIR/../images
[[ -f $IMAGES/first.tar && -f $IMAGES/rebuilt.tar ]] ||
  lab_die "no node images in $IMAGES (vm-tests/run builds them with packaging/image/build)"
FLEX=/var/lib/lab-kubelet-plugins/volume/exec   # kubelet's --volume-plugin-dir here
KUBELET=$LAB_KUBELET_DIR
CTR=(ctr --namespace k8s.io)
ref_of() { tar -xOf "$1" manifest.json | jq -r '.[0].RepoTags[0]'; }
IMAGE=$(ref_of "$IMAGES/first.tar")

lab_run systemctl start containerd
lab_wait_for 60 "containerd answers" "${CTR[@]}" version
# stdin from /dev/null for every ctr call: `timeout` runs it outside the console's
# foreground group, and a read of the console would stop it (SIGTTIN).
lab_run lab_with_deadline 120 "${CTR[@]}" images import "$IMAGES/first.tar" </dev/null
first_digest=$("${CTR[@]}" images ls | awk -v r="$IMAGE" '$1 == r {print $3}')
lab_step "node image $IMAGE ($first_digest) imported into containerd"

# --- what kubelet and the node give the DaemonSet ------------------------------------
mkdir -p "$KUBELET/pods" /run/moor /var/lib/moor /etc/iscsi /mnt/disks /etc/moor-ds "$FLEX"
# kubelet makes its dir a shared mount of its own; the DaemonSet's Bidirectional mount
# relies on that.
mountpoint -q "$KUBELET" || mount --bind "$KUBELET" "$KUBELET"
mount --make-rshared "$KUBELET"
cat > /etc/moor-ds/config.yaml <<'EOF'
kubelet-dir: /var/lib/kubelet
state-dir: /var/lib/moor
run-dir: /run/moor
metrics-addr: 127.0.0.1:9477
host-mount-namespace: /proc/1/ns/mnt
local:
  kubernetes: off
  allowed-directories: [/mnt/disks]
EOF

# The init container: installs the front end into the host's plugin dir.
install_front_end() { # IMAGE NAME
  lab_run lab_with_deadline 120 "${CTR[@]}" run --rm \
    --mount "type=bind,src=$FLEX,dst=/flexvolume,options=rbind:rw" \
    "$1" "$2" /usr/local/bin/moor install-flexvolume --plugin-dir /flexvolume </dev/null
}
# The daemon container, with the DaemonSet's privileges and host mounts.
ds_mounts=(
  --mount "type=bind,src=/etc/moor-ds,dst=/etc/moor,options=rbind:ro"
  --mount "type=bind,src=$KUBELET,dst=$KUBELET,options=rbind:rshared:rw"
  --mount "type=bind,src=/dev,dst=/dev,options=rbind:rslave:rw"
  --mount "type=bind,src=/sys,dst=/sys,options=rbind:rw"
  --mount "type=bind,src=/lib/modules,dst=/lib/modules,options=rbind:ro"
  --mount "type=bind,src=/run/moor,dst=/run/moor,options=rbind:rw"
  --mount "type=bind,src=/var/lib/moor,dst=/var/lib/moor,options=rbind:rw"
  --mount "type=bind,src=/etc/iscsi,dst=/etc/iscsi,options=rbind:rw"
  --mount "type=bind,src=/run/udev,dst=/run/udev,options=rbind:ro"
  --mount "type=bind,src=/run/systemd,dst=/run/systemd,options=rbind:rw"
  --mount "type=bind,src=/mnt/disks,dst=/mnt/disks,options=rbind:rslave:rw"
)
# kubelet's runtime gives a pod with a Bidirectional mount an rshared root (CRI sets
# rootfsPropagation); ctr has no flag for it, so the DaemonSet's spec is made once from
# ctr's own flags and given that propagation, and each daemon container runs from it on
# its image's root file system (ctr takes a spec file only with a root of its own).
ds_spec() { # IMAGE
  [[ -f /etc/moor-ds/spec.json ]] && return 0
  "${CTR[@]}" container create --privileged --net-host --with-ns "pid:/proc/1/ns/pid" \
    --env MOOR_CONFIG=/etc/moor/config.yaml --env "MOOR_NODE_NAME=$(hostname)" \
    "${ds_mounts[@]}" "$1" moor-spec /usr/local/bin/moor daemon </dev/null >/dev/null
  "${CTR[@]}" container info moor-spec </dev/null | jq '.Spec | .linux.rootfsPropagation = "rshared"' > /etc/moor-ds/spec.json
  "${CTR[@]}" container delete moor-spec </dev/null >/dev/null
  jq -e '.linux.rootfsPropagation == "rshared" and (.linux.namespaces | map(.type) | index("network") | not)' \
    /etc/moor-ds/spec.json >/dev/null || lab_die "the DaemonSet spec is not what it should be: $(cat /etc/moor-ds/spec.json)"
}
ds_run() { # IMAGE NAME: the daemon, detached
  local root=/var/lib/moor-ds/rootfs-$2
  ds_spec "$1"
  mkdir -p "$root"
  "${CTR[@]}" images mount --rw "$1" "$root" </dev/null >/dev/null
  lab_on_exit umount -l "$root"
  # Each container its own cgroup (the spec was made for "moor-spec"): a container that
  # ends takes its cgroup's processes with it.
  jq --arg r "$root" --arg cg "/k8s.io/$2" '.root = {path: $r, readonly: true} | .linux.cgroupsPath = $cg' \
    /etc/moor-ds/spec.json > "/etc/moor-ds/spec-$2.json"
  "${CTR[@]}" run -d --config "/etc/moor-ds/spec-$2.json" "$2" </dev/null >/dev/null
}
readyz() {
  local r
  exec 3<>/dev/tcp/127.0.0.1/9477 || return 1
  printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3
  r=$(cat <&3)
  exec 3<&-
  [[ $r == *" 200 "* ]] || return 1
  printf '%s\n' "$r"
}
task_pid() { "${CTR[@]}" task ls | awk -v n="$1" '$1 == n {print $2}'; }
start_moor() { # IMAGE NAME
  ds_run "$1" "$2"
  lab_wait_for 60 "moor in container $2 is ready" readyz
  [[ -S /run/moor/moor.sock ]] || lab_die "no socket on the host at /run/moor/moor.sock"
}
stop_task() { # NAME SIGNAL
  "${CTR[@]}" task kill -s "$2" "$1" || true
  lab_wait_for 60 "container $1 stopped" sh -c "! ${CTR[*]} task ls | awk '\$1 == \"$1\" && \$3 == \"RUNNING\"' | grep -q ."
  "${CTR[@]}" task delete "$1" >/dev/null 2>&1 || true
  "${CTR[@]}" container delete "$1" >/dev/null
}
# kubelet execs the driver on the host, with no environment to speak of.
kubelet_exec() { # DRIVER OP ARGS…
  local driver=$1 reply status; shift
  reply=$(lab_with_deadline 120 env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$FLEX/moor~$driver/$driver" "$@") ||
    lab_die "$driver $1 exited non-zero: $reply"
  status=$(jq -r .status <<<"$reply") || lab_die "$driver $1 did not print one JSON object: $reply"
  [[ $status == Success ]] || lab_die "$driver $1: $reply"
  printf '%s\n' "$reply"
}

install_front_end "$IMAGE" moor-install-1
for d in local glusterfs nfs iscsi; do
  [[ -x $FLEX/moor~$d/$d ]] || lab_die "the installer left no $FLEX/moor~$d/$d"
done
lab_assert_eq "$(kubelet_exec local init | jq -r .capabilities.attach)" false "init's attach capability"
start_moor "$IMAGE" moor-a
ready=$(readyz)
[[ $ready == *"placement: container, FUSE clients in scopes of the host's systemd"* ]] ||
  lab_die "moor does not say it runs in a container with the host's systemd: $ready"
[[ $ready != *warning:* ]] || lab_die "readyz warns: $ready"
moor_pid=$(task_pid moor-a)
moor_cgroup=$(cat "/proc/$moor_pid/cgroup")
lab_step "front end installed into $FLEX; moor-a (pid $moor_pid, cgroup ${moor_cgroup#0::}) ready in container mode"

# --- a local directory volume and a GlusterFS volume, as kubelet mounts them -------
mkdir -p /mnt/disks/vol1 && echo local-seed > /mnt/disks/vol1/seed
L_UID=6f1c2a9e-ds00-4000-8000-000000000001
L_DIR=$(lab_pod_volume_dir "$L_UID" local vol1)
mkdir -p "$L_DIR"
kubelet_exec local mount "$L_DIR" "$(jq -cn --arg uid "$L_UID" '{path: "/mnt/disks/vol1",
  "kubernetes.io/readwrite": "rw", "kubernetes.io/pod.uid": $uid, "kubernetes.io/pvOrVolumeName": "vol1"}')" >/dev/null
lab_assert_mounted "$L_DIR"
lab_assert_file_eq "$L_DIR/seed" local-seed

lab_gluster_start
lab_on_exit lab_gluster_stop
lab_gluster_volume gv1
G_UID=6f1c2a9e-ds00-4000-8000-000000000002
G_DIR=$(lab_pod_volume_dir "$G_UID" glusterfs gv1)
mkdir -p "$G_DIR"
kubelet_exec glusterfs mount "$G_DIR" "$(jq -cn --arg e "$GLUSTER_SERVER" --arg uid "$G_UID" '{endpoints: $e,
  path: "gv1", "kubernetes.io/readwrite": "rw", "kubernetes.io/pod.uid": $uid,
  "kubernetes.io/pvOrVolumeName": "gv1"}')" >/dev/null
lab_assert_mounted "$G_DIR" fuse.glusterfs
echo fuse-before > "$G_DIR/before"
g_stage=$(awk -v p="$KUBELET/plugins/moor/glusterfs/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | head -n1)
[[ -n $g_stage ]] || lab_die "no glusterfs stage mount on the host"
g_pid=$(lab_gluster_client_pid "$g_stage") || lab_die "no glusterfs client holds /dev/fuse for $g_stage"
g_cgroup=$(cat "/proc/$g_pid/cgroup")
[[ $g_cgroup == *.scope* && $g_cgroup != "$moor_cgroup" && $g_cgroup != *"${moor_cgroup#0::}"* ]] ||
  lab_die "the FUSE client is in the container's cgroup, not a host scope: $g_cgroup (moor: $moor_cgroup)"
[[ $(readlink "/proc/$g_pid/ns/mnt") == "$(readlink /proc/1/ns/mnt)" ]] ||
  lab_die "the FUSE client is not in the host's mount namespace"
lab_step "local and GlusterFS volumes published; FUSE client $g_pid in host scope ${g_cgroup#0::}"

# --- no second moor on one node -------------------------------------------------------
jq '.linux.cgroupsPath = "/k8s.io/moor-dup"' /etc/moor-ds/spec-moor-a.json > /etc/moor-ds/spec-dup.json
if dup=$(lab_with_deadline 60 "${CTR[@]}" run --rm --config /etc/moor-ds/spec-dup.json moor-dup </dev/null 2>&1); then
  dup_rc=0
else
  dup_rc=$?
fi
[[ $dup_rc != 0 ]] || lab_die "a second moor started on the same state dir"
[[ $dup == *lock* || $dup == *"another"* ]] || lab_die "the second moor's refusal does not name the lock: $dup"
readyz >/dev/null || lab_die "the first moor stopped answering after the second was refused"
lab_step "a second moor on the node was refused: $(grep -o -m1 '[^"]*lock[^"]*' <<<"$dup" | head -c 160)"

# --- kill the container: nothing of the volumes goes with it --------------------------
stop_task moor-a SIGKILL
lab_assert_mounted "$L_DIR"
lab_assert_mounted "$G_DIR" fuse.glusterfs
lab_pid_alive "$g_pid" || lab_die "the FUSE client $g_pid died with the container"
lab_assert_file_eq "$G_DIR/before" fuse-before
echo written-while-moor-is-gone > "$L_DIR/gone"
lab_assert_file_eq /mnt/disks/vol1/gone written-while-moor-is-gone
lab_step "moor-a killed: mounts, data and FUSE client $g_pid intact"

start_moor "$IMAGE" moor-b
status=$(env -i PATH=/usr/bin:/bin "$FLEX/.moor/moor" status -o json) || lab_die "moor status failed"
printf '%s\n' "$status" > "$LAB_OUT/status-after-kill.json"
for d in "$L_DIR" "$G_DIR"; do
  jq -e --arg d "$d" '[.. | objects | select(any(.[]?; . == $d))] | length > 0' <<<"$status" >/dev/null ||
    lab_die "moor status does not list $d after the restart: $status"
done
lab_step "moor-b rebuilt its state from /var/lib/moor and the mount table"

# --- upgrade to a rebuilt image: SIGTERM (drain), the new installer, the new daemon ------
lab_run lab_with_deadline 120 "${CTR[@]}" images import "$IMAGES/rebuilt.tar" </dev/null
NEW=$(ref_of "$IMAGES/rebuilt.tar")
new_digest=$("${CTR[@]}" images ls | awk -v r="$NEW" '$1 == r {print $3}')
[[ -n $new_digest && $new_digest != "$first_digest" ]] || lab_die "the rebuilt image is the same image ($new_digest)"
stop_task moor-b SIGTERM
install_front_end "$NEW" moor-install-2
start_moor "$NEW" moor-c
lab_pid_alive "$g_pid" || lab_die "the FUSE client $g_pid died in the upgrade"
lab_assert_file_eq "$G_DIR/before" fuse-before
echo fuse-after > "$G_DIR/after"
lab_assert_file_eq "$G_DIR/after" fuse-after
lab_assert_file_eq "$L_DIR/seed" local-seed
lab_step "upgraded to $NEW ($new_digest): volumes serve, FUSE client $g_pid unchanged"

# --- kubelet unmounts: clean ------------------------------------------------------------
kubelet_exec local unmount "$L_DIR" >/dev/null
kubelet_exec glusterfs unmount "$G_DIR" >/dev/null
lab_assert_not_mounted "$L_DIR"
lab_assert_not_mounted "$G_DIR"
lab_wait_for 30 "FUSE client $g_pid exits after the unmount" lab_pid_gone "$g_pid"
left=$(awk -v d="$KUBELET/" 'index($5, d) == 1 && $5 != d { print $5 }' /proc/self/mountinfo)
[[ -z $left ]] || lab_die "mounts left under $KUBELET: $left"
lab_assert_file_eq /mnt/disks/vol1/gone written-while-moor-is-gone
stop_task moor-c SIGTERM
lab_step "unmount through the host-installed front end removed every mount; moor-c stopped"
