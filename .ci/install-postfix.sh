#!/usr/bin/env bash
# Install Debian's Postfix for the integration tests, without leaving the system instance running.
# Idempotent: does nothing when postfix is already installed. Needs root (as on CI).
set -euo pipefail

if command -v postfix >/dev/null 2>&1 || [ -x /usr/sbin/postfix ]; then
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
# Keep the package scripts from starting the system postfix (no init/systemd here, but be sure).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
fi
cleanup() {
    if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi
}
trap cleanup EXIT

apt-get install -y --no-install-recommends postfix

# If the package did start the system instance anyway, stop it: tests run their own instances.
if /usr/sbin/postfix status >/dev/null 2>&1; then
    /usr/sbin/postfix stop || true
fi
