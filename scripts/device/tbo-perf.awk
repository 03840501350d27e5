# test-backend-ops perf output, one line a case: its name and its time. CUDA's graph warm-up message can come
# between a case's name and its time, on two lines: this pairs them. -v side=NAME puts "NAME: " in front.
# usage: awk [-v side=before] -f scripts/device/tbo-perf.awk perf.log
/[A-Z_]+\(.*\)/ { match($0, /[A-Z_]+\([^)]*\)/); name = substr($0, RSTART, RLENGTH) }
/us\/run/ { match($0, /[0-9.]+ us\/run/); print (side != "" ? side ": " : "") name " " substr($0, RSTART, RLENGTH) }
