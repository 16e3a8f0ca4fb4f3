# make bench's plot: 4K random-read IOPS against queue depth, and sequential-read MiB/s against block
# size, one line per target. run_bench.py calls it with
#   gnuplot -e "qd_file='...'; bs_file='...'; out='....png'; ncols=N; subtitle='...'" bench/plot.gp
# Data files: a header line "x target1 target2 ...", then one line per point; '?' marks a failed point.
set terminal pngcairo size 1400,560 font "sans,10"
set output out
set datafile missing "?"
set key top left autotitle columnheader
set grid
set logscale x 2
set style data linespoints
set multiplot layout 1,2 title "ispace bench: ".subtitle

set title "4K random read (iscsi-perf)"
set xlabel "queue depth"
set ylabel "IOPS"
set yrange [0:*]
set xrange [0.8:80]
set xtics (1, 2, 4, 8, 16, 32, 64)
plot for [i=2:ncols] qd_file using 1:i lw 2 pt 7

set title "sequential read, QD16 (iscsi-perf)"
set xlabel "block size (KiB)"
set ylabel "MiB/s"
set xrange [3.2:1280]
set xtics (4, 8, 16, 32, 64, 128, 256, 512, 1024)
plot for [i=2:ncols] bs_file using 1:i lw 2 pt 7

unset multiplot
