# The watchdog process (see watchdog.py): stops the process groups its parent leaves running.
#
#     sh watchdog.sh     # reads "guard PGID STAGE SIGNAL" / "release PGID" lines on stdin
#
# A POSIX shell rather than Python: it idles for the whole life of `make run`, and a shell holds
# about 1.5 MB where the smallest Python holds 9. Once stdin closes (the parent exited, however),
# every group still guarded is stopped stage by stage: its leader gets its stop signal, and the
# whole group SIGKILL if anything of it is left GRACE_S later.

# Short: the supervisor is already gone, and an orphan holding the port blocks the next run.
GRACE_S=3

# We outlive the parent on purpose; its terminal's Ctrl-C and hang-up are not for us, and a
# closed terminal must not end us half way (SIGPIPE) before the groups are stopped.
trap '' INT HUP PIPE

guarded="" # "PGID:STAGE:SIGNAL" words

forget() {
    kept=""
    for entry in $guarded; do
        case $entry in "$1":*) ;; *) kept="$kept $entry" ;; esac
    done
    guarded=$kept
}

group_alive() {
    kill -0 "-$1" 2>/dev/null
}

while read -r verb pgid stage signum; do
    case "$pgid$stage$signum" in "" | *[!0-9]*) continue ;; esac
    case $verb in
        guard)
            forget "$pgid"
            guarded="$guarded $pgid:$stage:$signum"
            ;;
        release) forget "$pgid" ;;
    esac
done

live=""
count=0
stages=""
for entry in $guarded; do
    if group_alive "${entry%%:*}"; then
        live="$live $entry"
        count=$((count + 1))
        stage=${entry#*:}
        stages="$stages ${stage%%:*}"
    fi
done
[ "$count" -eq 0 ] && exit 0
echo "[ingestor] watchdog: the supervisor is gone; stopping $count process group(s) it left" >&2

killed=""
for stage in $(printf '%s\n' $stages | sort -n -u); do
    members=""
    for entry in $live; do
        rest=${entry#*:}
        if [ "${rest%%:*}" = "$stage" ]; then
            members="$members ${entry%%:*}"
            kill "-${entry##*:}" "${entry%%:*}" 2>/dev/null
        fi
    done
    ticks=0 # of 50 ms
    while [ "$ticks" -lt $((GRACE_S * 20)) ]; do
        any=""
        for pgid in $members; do
            group_alive "$pgid" && any=1 && break
        done
        [ -z "$any" ] && break
        sleep 0.05
        ticks=$((ticks + 1))
    done
    for pgid in $members; do
        if group_alive "$pgid"; then
            kill -9 "-$pgid" 2>/dev/null
            killed="${killed:+$killed, }$pgid"
        fi
    done
done
if [ -n "$killed" ]; then
    echo "[ingestor] watchdog: killed process group(s) $killed (still running ${GRACE_S}s after the stop signal)" >&2
fi
exit 0
