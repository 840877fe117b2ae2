#!/bin/sh
# Create the Ray cluster's shared token once, in the file named by RAY_AUTH_TOKEN_PATH.
#
# Every Ray process of the stack (head, workers, the runner's driver) runs with
# RAY_AUTH_MODE=token and reads this file, so they all present the same bearer
# token; anything else reaching the GCS port is refused. 256 random bits, as
# `ray get-auth-token --generate` makes (which can only write ~/.ray/auth_token).
# An existing token is kept, so restarts and `--scale` keep working.
set -eu
path="${RAY_AUTH_TOKEN_PATH:?RAY_AUTH_TOKEN_PATH must name the token file}"
if [ -s "$path" ]; then
    echo "ray-token: keeping the existing token in $path"
    exit 0
fi
umask 077
python -c 'import secrets, sys; sys.stdout.write(secrets.token_hex(32))' > "$path.tmp"
mv "$path.tmp" "$path"
echo "ray-token: wrote a new token to $path"
