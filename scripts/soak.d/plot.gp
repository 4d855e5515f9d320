# The soak's plot: RSS, open fds and tokio tasks of the broker and the gateway over time.
# Called by scripts/soak with dir (holding broker.dat and gateway.dat: minutes, RSS MiB, fds,
# tasks, threads) and warmup (minutes).
set terminal svg size 720,640 dynamic font "sans,11"
set output dir."/soak.svg"
set multiplot layout 3,1 title "aiot soak: ".system("date -u +%Y-%m-%d")
set grid
set key top left horizontal
set arrow 1 from warmup, graph 0 to warmup, graph 1 nohead dashtype 2 linecolor "gray"
set lmargin 10
set ylabel "RSS (MiB)"
set yrange [0:*]
plot dir."/broker.dat" using 1:2 with linespoints pointtype 7 pointsize 0.4 title "broker", \
     dir."/gateway.dat" using 1:2 with linespoints pointtype 7 pointsize 0.4 title "gateway"
set ylabel "open fds"
plot dir."/broker.dat" using 1:3 with linespoints pointtype 7 pointsize 0.4 title "broker", \
     dir."/gateway.dat" using 1:3 with linespoints pointtype 7 pointsize 0.4 title "gateway"
set ylabel "tokio tasks"
set xlabel "minutes (dashed: end of warm-up)"
plot dir."/broker.dat" using 1:4 with linespoints pointtype 7 pointsize 0.4 title "broker", \
     dir."/gateway.dat" using 1:4 with linespoints pointtype 7 pointsize 0.4 title "gateway"
unset multiplot
