# The soak's plot: RSS, open fds and tokio tasks of the broker and the gateway over time.
# Called by scripts/soak with dir (holding broker.dat and gateway.dat: minutes, RSS MiB, fds,
# tasks, threads), warmup (minutes) and title.
set terminal svg size 720,600 font "sans,11"
set output dir."/soak.svg"
set datafile separator whitespace
set multiplot layout 3,1 title title
set grid
set lmargin 10
set yrange [0:*]
set arrow 1 from warmup, graph 0 to warmup, graph 1 nohead dashtype 2 linecolor "gray40"
set key top left horizontal
set offsets 0, 0, graph 0.25, 0
set ylabel "RSS (MiB)"
plot dir."/broker.dat" using 1:2 with lines linewidth 2 title "broker", \
     dir."/gateway.dat" using 1:2 with lines linewidth 2 title "gateway"
unset key
set offsets 0, 0, 0, 0
set ylabel "open fds"
plot dir."/broker.dat" using 1:3 with lines linewidth 2, dir."/gateway.dat" using 1:3 with lines linewidth 2
set ylabel "tokio tasks"
set xlabel "minutes (dashed: end of warm-up)"
plot dir."/broker.dat" using 1:4 with lines linewidth 2, dir."/gateway.dat" using 1:4 with lines linewidth 2
unset multiplot
