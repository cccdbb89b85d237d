module tongban/bench/loadgen

go 1.21
