#!/bin/sh
# The tests and the demo run this checkout's code inside systemd units of a sandboxed
# systemd, as the unprivileged users `mushishi` and `nobody`, with PrivateTmp=yes. Two
# places therefore cannot work, and this says so before anything is built:
#   * under /tmp or /var/tmp: PrivateTmp=yes gives each unit an empty /tmp and /var/tmp;
#   * behind a directory other users cannot traverse (e.g. /root, mode 0700).
set -eu
here=$(pwd -P)
case "$here/" in
    /tmp/*|/var/tmp/*)
        echo "check-checkout: this checkout is under ${here%%/tmp/*}/tmp ($here)," \
             "which units with PrivateTmp=yes cannot see; clone it elsewhere," \
             "e.g. git clone <url> /srv/mushishi" >&2
        exit 1 ;;
esac
if [ "$(id -u)" -eq 0 ] && ! setpriv --reuid=nobody --regid=nogroup --clear-groups \
        test -r "$here/pyproject.toml"; then
    dir="$here"
    while [ "$dir" != / ]; do
        if ! setpriv --reuid=nobody --regid=nogroup --clear-groups test -x "$dir"; then
            blocked="$dir"
        fi
        dir=$(dirname "$dir")
    done
    echo "check-checkout: other users cannot read $here (${blocked:-a parent directory}" \
         "is not traversable by them), but the units run as \`mushishi\`; clone it" \
         "elsewhere (e.g. /srv/mushishi) or run: chmod o+x ${blocked:-<that directory>}" >&2
    exit 1
fi
