#!/bin/sh
# Reproduces the rate-accuracy figure of docs/compression.md: test accuracy against bytes per
# sample (zstd frames) for the image baseline and the split features, one sample per frame and
# batches of 100.
#
#   scripts/plot_compression.sh BUILD_DIR [compression_study options...]   run the study, then plot
#   scripts/plot_compression.sh FILE.csv                                      plot a saved run
#
# The study's CSV goes to docs/figures/compression.csv. Needs gnuplot (Debian package gnuplot-nox).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
csv="$root/docs/figures/compression.csv"
case ${1:-build} in
  *.csv) csv=$1 ;;
  *)
    build=${1:-build}
    [ $# -gt 0 ] && shift
    mkdir -p "$root/docs/figures"
    "$build/examples/compression_study" --csv "$csv" "$@"
    ;;
esac
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
# series: <what>,<method filter> for batch 1 and batch 100 (x: bytes with zstd, y: accuracy)
series() {  # name what-regex method-regex
  for b in 1 100; do
    awk -F, -v w="$2" -v m="$3" -v b="$b" 'NR > 1 && $1 ~ w && $2 ~ m && $3 == b { print $6, $4, $2 }' "$csv" |
      sort -g > "$data/$1-$b.dat"
  done
}
series image '^input$' 'image'
series image_tuned '^input(-tuned)?$' 'image'
series split1 '^split1$' '^(fp32|int[842] tensor static minmax)$'
series split2 '^split2$' '^(fp32|int[842] tensor static minmax)$'
series split1_tuned '^split1-tuned$' 'tensor static'
series split2_tuned '^split2-tuned$' 'tensor static'
# the 8-bit image joins the fine-tuned curve (it is not reduced, nothing to tune); keep one 8-bit point
for b in 1 100; do
  awk '!seen[$3]++' "$data/image_tuned-$b.dat" | sort -g > "$data/t" && mv "$data/t" "$data/image_tuned-$b.dat"
  awk -F, -v b="$b" '$1 == "float" { print 1e5, $4 }' "$csv" > "$data/float-$b.dat"
done
svg="$root/docs/figures/rate-accuracy.svg"
gnuplot <<GP
set terminal svg size 980,460 dynamic font "sans,11"
set output "$svg"
set multiplot layout 1,2 title "Fashion-MNIST, 784-512-256-10 MLP: bytes on the wire per sample (zstd frames) vs test accuracy"
set logscale x
set xrange [15:3000]
set yrange [70:91]
set xlabel "bytes per sample (log)"
set ylabel "test accuracy (%)"
set grid
set key bottom right font ",9"
do for [b in "1 100"] {
  set title (b eq "1" ? "one sample per frame" : "batches of 100 samples per frame")
  plot "$data/image-".b.".dat" using 1:2 with linespoints pt 7 lw 2 lc rgb "#444444" title "image 8/4/2/1 bit", \
       "$data/image_tuned-".b.".dat" using 1:2 with linespoints pt 6 dt 2 lw 2 lc rgb "#444444" title "image, model fine-tuned", \
       "$data/split1-".b.".dat" using 1:2 with linespoints pt 5 lw 2 lc rgb "#1f77b4" title "split 1 (512): fp32/int8/4/2", \
       "$data/split2-".b.".dat" using 1:2 with linespoints pt 9 lw 2 lc rgb "#d62728" title "split 2 (256): fp32/int8/4/2", \
       "$data/split1_tuned-".b.".dat" using 1:2 with points pt 4 ps 1.5 lw 2 lc rgb "#1f77b4" title "split 1 int2, tail fine-tuned", \
       "$data/split2_tuned-".b.".dat" using 1:2 with points pt 8 ps 1.5 lw 2 lc rgb "#d62728" title "split 2 int2, tail fine-tuned"
}
unset multiplot
GP
echo "wrote $svg"
