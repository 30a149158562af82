"""systemd units, D-Bus policy and sysusers/tmpfiles snippets shipped with mushishi."""
