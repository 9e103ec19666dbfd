#!/usr/bin/env bash
# Add a device to a Mosquitto-secured fleet: its own credentials and its ACL entry.
#
#   deploy/fleet-add-device.sh DEVICE_ID [--group G]... [--passwd FILE] [--acl FILE]
#                              [--password-out FILE]
#
# Writes a random password for DEVICE_ID into the broker's password file (mosquitto_passwd),
# appends "user DEVICE_ID" with read access to each group's command topics to the ACL file,
# and writes the password to --password-out (mode 0600; copy it to the device and point
# mqtt.password_file at it). The per-device rules (own prefix only) are the ACL's pattern
# lines. Reload the broker afterwards: systemctl reload mosquitto (or kill -HUP its pid).
# docs/fleet.md explains the design.
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

[ $# -ge 1 ] || usage 2
case "$1" in -h|--help) usage 0;; esac
DEVICE=$1; shift
PASSWD=/etc/mosquitto/edge-agent.passwd
ACL=/etc/mosquitto/edge-agent.acl
PREFIX=edge-agent
OUT=
GROUPS_=()
while [ $# -gt 0 ]; do
  case "$1" in
    --group) GROUPS_+=("${2:?--group needs a name}"); shift 2;;
    --passwd) PASSWD=${2:?}; shift 2;;
    --acl) ACL=${2:?}; shift 2;;
    --prefix) PREFIX=${2:?}; shift 2;;
    --password-out) OUT=${2:?}; shift 2;;
    -h|--help) usage 0;;
    *) echo "fleet-add-device: unknown option $1" >&2; exit 2;;
  esac
done
name_ok() { [[ $1 =~ ^[a-z0-9_-]{1,64}$ ]]; }
name_ok "$DEVICE" || { echo "fleet-add-device: device id '$DEVICE': expected [a-z0-9_-]{1,64}" >&2; exit 2; }
case "$DEVICE" in operator|collector)
  echo "fleet-add-device: '$DEVICE' is an operator/collector user name, not a device" >&2; exit 2;;
esac
for g in "${GROUPS_[@]+"${GROUPS_[@]}"}"; do
  name_ok "$g" || { echo "fleet-add-device: group '$g': expected [a-z0-9_-]{1,64}" >&2; exit 2; }
done
[ -f "$ACL" ] || { echo "fleet-add-device: $ACL: no such ACL file (start from deploy/mosquitto/edge-agent.acl)" >&2; exit 1; }
if grep -qx "user $DEVICE" "$ACL"; then
  echo "fleet-add-device: $DEVICE is already in $ACL" >&2; exit 1
fi
command -v mosquitto_passwd >/dev/null || { echo "fleet-add-device: mosquitto_passwd not found (apt-get install mosquitto)" >&2; exit 1; }

PASSWORD=$(head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 32)
[ -f "$PASSWD" ] || { install -m 0600 /dev/null "$PASSWD"; }
mosquitto_passwd -b "$PASSWD" "$DEVICE" "$PASSWORD"
{
  echo ""
  echo "user $DEVICE"
  for g in "${GROUPS_[@]+"${GROUPS_[@]}"}"; do
    echo "topic read $PREFIX/group/$g/cmd/#"
  done
} >> "$ACL"
if [ -n "$OUT" ]; then
  (umask 077; printf '%s\n' "$PASSWORD" > "$OUT")
  echo "$DEVICE: added (groups: ${GROUPS_[*]:-none}); password in $OUT"
else
  echo "$DEVICE: added (groups: ${GROUPS_[*]:-none}); password: $PASSWORD"
fi
echo "reload the broker: systemctl reload mosquitto (or kill -HUP <pid>)"
