#!/bin/sh
# One benchmark container's workload, all on 127.0.0.1 inside its own network namespace.
#
#   LONG=n    n long-lived TCP connections (IPv6 listeners, IPv4 clients: ESTABLISHED on both ends)
#   UDP=1     busybox syslogd forwarding to 127.0.0.1:5140: one connected UDP socket
#   HTTP=1    an httpd on 127.0.0.1:8080 and a loop of short requests to it; the server closes
#             first, so every request leaves one socket in TIME_WAIT for 60 s
#   PERIOD=s  seconds between two rounds of requests (default 10)
#   BURST=k   requests per round (default 2)
#
# The request loop obeys /ctl/mode, a file the benchmark writes on the host:
#   run        requests every PERIOD seconds
#   hold       no requests (TIME_WAIT drains after 60 s)
#   burst-<g>  one round of requests for each new <g>, then quiet: every number stays
#              still for about a minute, long enough to compare two collectors exactly.

set -u
LONG=${LONG:-0}
UDP=${UDP:-0}
HTTP=${HTTP:-0}
PERIOD=${PERIOD:-10}
BURST=${BURST:-2}

mkfifo /tmp/hold
# A writer that never writes: every nc below blocks on reading the fifo, so its
# connection stays open. The shell (pid 1) keeps the descriptor for its whole life.
exec 3<>/tmp/hold

i=1
while [ "$i" -le "$LONG" ]; do
  port=$((9000 + i))
  nc -l -p "$port" </tmp/hold >/dev/null &
  until netstat -ltn | grep -q ":$port "; do sleep 0.05; done
  nc 127.0.0.1 "$port" </tmp/hold >/dev/null &
  i=$((i + 1))
done

if [ "$UDP" = 1 ]; then
  syslogd -R 127.0.0.1:5140 -O /dev/null
  sleep 0.1
  logger "benchmark container up"   # the UDP socket is made on the first message
fi

requests() {
  n=0
  while [ "$n" -lt "$BURST" ]; do
    wget -q -O /dev/null http://127.0.0.1:8080/ || true
    n=$((n + 1))
  done
}

if [ "$HTTP" = 1 ]; then
  mkdir -p /tmp/www
  echo ok >/tmp/www/index.html
  httpd -p 127.0.0.1:8080 -h /tmp/www
  sleep $((RANDOM % PERIOD))   # spread the rounds of many containers over the period
  last=
  while :; do
    mode=run
    [ -r /ctl/mode ] && read -r mode </ctl/mode
    case $mode in
      run) requests; pause=$PERIOD ;;
      burst-*) [ "$mode" = "$last" ] || requests; pause=1 ;;
      *) pause=1 ;;
    esac
    last=$mode
    sleep "$pause"
  done
fi

exec sleep 2147483647
