package redirect

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-16 -cflags "-O2 -g -Wall -Werror" -target bpfel -type addr_key redirect ../../../bpf/redirect.c -- -I/usr/include/x86_64-linux-gnu
