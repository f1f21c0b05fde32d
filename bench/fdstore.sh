#!/bin/bash
# Seconds fifod takes for three streams, with and without a service
# manager's fd store (crash-only mode): 4 GiB 1→1, 1 GiB fanned out to 3,
# 1 GB of lines through a line route. socat stands in for the notify
# socket (it takes the datagrams and lets the fds go).
#   bench/fdstore.sh target/release/fifod plain
#   bench/fdstore.sh target/release/fifod store
set -eu
BIN=$1; MODE=$2; S=; D=/dev/shm/sb.$$; mkdir -p $D/run
cat > $D/f.toml <<E
[daemon]
dir = "$D/run"
[fifo.in]
[fifo.out]
[fifo.fan]
[fifo.a]
[fifo.b]
[fifo.c]
[fifo.lin]
[fifo.lout]
[[route]]
from = ["in"]
to = ["out"]
[[route]]
from = ["fan"]
to = ["a", "b", "c"]
[[route]]
from = ["lin"]
to = ["lout"]
framing = "lines"
E
if [ "$MODE" = store ]; then
  socat -u UNIX-RECV:$D/n.sock /dev/null & S=$!
  sleep 0.2
  NOTIFY_SOCKET=$D/n.sock FDSTORE=4096 $BIN run --config $D/f.toml 2>$D/log & F=$!
else
  $BIN run --config $D/f.toml 2>$D/log & F=$!
fi
for i in $(seq 100); do [ -p $D/run/lout ] && break; sleep 0.05; done
sleep 0.3
t() { local s=$(date +%s.%N); "$@"; local e=$(date +%s.%N); echo "$(echo "$e - $s" | bc)"; }
one=$(t bash -c "dd if=$D/run/out of=/dev/null bs=1M iflag=fullblock count=4096 status=none & dd if=/dev/zero of=$D/run/in bs=1M count=4096 status=none; wait")
fan=$(t bash -c "for o in a b c; do dd if=$D/run/\$o of=/dev/null bs=1M iflag=fullblock count=1024 status=none & done; dd if=/dev/zero of=$D/run/fan bs=1M count=1024 status=none; wait")
lines=$(t bash -c "head -n 18000000 $D/run/lout > /dev/null & yes 'a line of some length for the line route, not too short' | head -n 18000000 > $D/run/lin; wait")
echo "$MODE 1to1_4GiB=${one}s fanout_1GiB=${fan}s lines_1GB=${lines}s"
kill $F; wait $F 2>/dev/null || true
if [ -n "$S" ]; then kill $S 2>/dev/null || true; fi
rm -rf $D
