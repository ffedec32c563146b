#!/bin/sh
# provider-manager's container scripts, installed as two names:
#
#   /usr/local/bin/pm-entrypoint   the image's entrypoint (under tini). With no arguments, or
#                                  with "provider-manager" or options ("--log-level debug")
#                                  it prepares the security settings and execs the daemon;
#                                  any other command (pmctl, sh) is exec'd as given.
#   /usr/local/bin/pm-healthcheck  the HEALTHCHECK / Kubernetes probe: `pmctl health` over the
#                                  loopback. Exit 0 healthy, 1 not.
#
# Security (see docs/container.md):
#   CURVE on (default): the server key file and the allowed clients directory come from the
#     environment (PM_CURVE_SECRET_KEY_FILE, PM_CURVE_CLIENTS_DIR) or, when unset, from the
#     curve_secret_key_file / curve_clients_dir lines of the config file. The health check
#     must be a CURVE client too, so at each start the entrypoint makes a key pair for it in
#     <data dir>/.run and hands the daemon a clients directory that holds the mounted clients'
#     *.pub files plus that one key. The mounted secrets are only read, never changed.
#   CURVE off: PM_SECURITY=insecure (also sets PM_ALLOW_INSECURE=1, since the endpoints are not
#     on the loopback), or PM_CURVE_SECRET_KEY_FILE set to the empty string (then set
#     PM_ALLOW_INSECURE=1 yourself). The daemon then gets a copy of the config file whose
#     curve_* keys are null, because an empty variable means "unset" to the daemon and cannot
#     take away a key that the file sets.
set -eu

default_config=/etc/provider-manager/provider-manager.yaml
default_data_dir=/var/lib/provider-manager
health_key_name=pm-container-healthcheck

log()
{
    echo "pm-entrypoint: $*" >&2
}

config_file()
{
    echo "${PM_CONFIG:-$default_config}"
}

# The value of the first "KEY: value" line of the config file (block style, as the shipped
# file is written), without quotes or a trailing comment; empty when absent or null.
config_value()
{
    file=$(config_file)
    [ -r "$file" ] || return 0
    value=$(sed -n "s/^[[:space:]]*$1:[[:space:]]*//p" "$file" | head -n 1 |
        sed -e 's/[[:space:]]#.*$//' -e 's/[[:space:]]*$//' -e "s/^[\"']//" -e "s/[\"']\$//")
    case $value in
        null | Null | NULL | "~") value="" ;;
    esac
    echo "$value"
}

data_dir()
{
    dir=${PM_DATA_DIR:-}
    [ -n "$dir" ] || dir=$(config_value data_dir)
    echo "${dir:-$default_data_dir}"
}

# Scratch files of this container instance: the health check's key pair, the merged clients
# directory, the derived config. On the data volume so that a read-only root file system
# works; remade at every start.
run_dir()
{
    echo "${PM_RUNTIME_DIR:-$(data_dir)/.run}"
}

# The request endpoint as seen from inside the container: the daemon's own endpoint with its
# host replaced by 127.0.0.1 (it binds 0.0.0.0, *, or an interface name).
local_endpoint()
{
    endpoint=${PM_ENDPOINT:-}
    [ -n "$endpoint" ] || endpoint=$(config_value endpoint)
    [ -n "$endpoint" ] || endpoint=tcp://127.0.0.1:5555
    case $endpoint in
        tcp://*) echo "tcp://127.0.0.1:${endpoint##*:}" ;;
        *) echo "$endpoint" ;;
    esac
}

healthcheck()
{
    dir=$(run_dir)
    endpoint=${PM_HEALTH_ENDPOINT:-}
    [ -n "$endpoint" ] || endpoint=$(cat "$dir/endpoint" 2>/dev/null || local_endpoint)
    set -- --endpoint "$endpoint" --timeout 2000 --retries 1
    if [ -f "$dir/$health_key_name.key" ]; then
        set -- "$@" --curve-server-key "$dir/server.pub" \
            --curve-client-key "$dir/$health_key_name.key"
    fi
    if pmctl "$@" health; then
        exit 0
    fi
    exit 1
}

# Turns CURVE off for the daemon: no curve_* variables, and a config copy with null keys.
curve_off()
{
    dir=$1
    unset PM_CURVE_SECRET_KEY_FILE PM_CURVE_CLIENTS_DIR
    file=$(config_file)
    if [ -r "$file" ] && grep -Eq '^[[:space:]]*curve_(secret_key_file|clients_dir):' "$file"; then
        sed -E 's/^([[:space:]]*curve_(secret_key_file|clients_dir):).*$/\1 null/' "$file" \
            >"$dir/provider-manager.yaml"
        export PM_CONFIG="$dir/provider-manager.yaml"
        log "CURVE off: using a copy of $file without its curve_* keys"
    else
        log "CURVE off"
    fi
}

# CURVE on: the health check's own key pair, allowed next to the mounted clients' keys.
curve_on()
{
    dir=$1
    secret=$2
    clients=${PM_CURVE_CLIENTS_DIR:-}
    [ -n "$clients" ] || clients=$(config_value curve_clients_dir)
    if [ -z "$clients" ] || [ ! -d "$clients" ] || [ ! -r "$secret" ]; then
        # Let the daemon report what is missing, in its own words.
        log "CURVE key files incomplete (server key $secret, clients dir ${clients:-unset})"
        return 0
    fi
    mkdir -m 0700 "$dir/clients"
    count=0
    for pub in "$clients"/*.pub; do
        [ -e "$pub" ] || continue
        cp -L "$pub" "$dir/clients/"
        count=$((count + 1))
    done
    pmctl keygen "$dir" --name "$health_key_name" >/dev/null
    mv "$dir/$health_key_name.pub" "$dir/clients/"
    # The server's public key alone (pmctl reads the public-key line): the secret stays put.
    grep -E '^[[:space:]]*public-key[[:space:]]*=' "$secret" >"$dir/server.pub"
    export PM_CURVE_SECRET_KEY_FILE="$secret"
    export PM_CURVE_CLIENTS_DIR="$dir/clients"
    log "CURVE on: $count client keys from $clients, plus the health check's own"
}

entrypoint()
{
    case ${PM_SECURITY:-curve} in
        curve | insecure) ;;
        *)
            log "PM_SECURITY must be 'curve' or 'insecure', not '${PM_SECURITY}'"
            exit 2
            ;;
    esac
    data=$(data_dir)
    dir=$(run_dir)
    umask 077
    [ -d "$data" ] || mkdir -p "$data"
    mkdir -p "$dir"
    # Only this script's own files: PM_RUNTIME_DIR could point anywhere.
    rm -rf "$dir/clients" "$dir/$health_key_name.key" "$dir/$health_key_name.pub" \
        "$dir/server.pub" "$dir/provider-manager.yaml" "$dir/endpoint"
    local_endpoint >"$dir/endpoint"

    if [ "${PM_SECURITY:-curve}" = insecure ]; then
        export PM_ALLOW_INSECURE=1
        curve_off "$dir"
    elif [ "${PM_CURVE_SECRET_KEY_FILE+set}" = set ] && [ -z "$PM_CURVE_SECRET_KEY_FILE" ]; then
        curve_off "$dir"
    else
        secret=${PM_CURVE_SECRET_KEY_FILE:-}
        [ -n "$secret" ] || secret=$(config_value curve_secret_key_file)
        if [ -n "$secret" ]; then
            curve_on "$dir" "$secret"
        fi
    fi
    umask 022
    exec provider-manager "$@"
}

case $(basename "$0") in
    pm-healthcheck) healthcheck ;;
esac

# The daemon, when asked for it (no command, its name, or only options); anything else runs
# as given, so that `docker run IMAGE pmctl health` works.
case ${1:-} in
    "" | -*) entrypoint "$@" ;;
    provider-manager | /usr/local/bin/provider-manager)
        shift
        entrypoint "$@"
        ;;
    *) exec "$@" ;;
esac
