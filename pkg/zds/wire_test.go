//go:build linux

package zds

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/zdsapi"
)

// openFDs opens one fd per kind: "net" (this netns), "uts" (an nsfs file that is not a
// netns), "null" (/dev/null).
func openFDs(t testing.TB, kinds ...string) []int {
	t.Helper()
	paths := map[string]string{"net": "/proc/self/ns/net", "uts": "/proc/self/ns/uts", "null": "/dev/null"}
	var fds []int
	for _, k := range kinds {
		fd, err := unix.Open(paths[k], unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, fd)
	}
	return fds
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeRequest(t *testing.T) {
	add := &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: "u1", WorkloadInfo: info("p")}}}
	addNoUID := &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{WorkloadInfo: info("p")}}}
	keep := &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Keep{Keep: &zdsapi.KeepWorkload{Uid: "u1"}}}
	del := &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Del{Del: &zdsapi.DelWorkload{Uid: "u1"}}}
	snap := &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_SnapshotSent{SnapshotSent: &zdsapi.SnapshotSent{}}}
	tests := []struct {
		name    string
		msg     []byte
		fds     []string
		want    requestKind
		wantErr error // nil: success; errAny: some error
	}{
		{"add with a netns", marshal(t, add), []string{"net"}, kindAdd, nil},
		{"add without fd", marshal(t, add), nil, 0, ErrBadFDs},
		{"add with two fds", marshal(t, add), []string{"net", "net"}, 0, ErrBadFDs},
		{"add with a file", marshal(t, add), []string{"null"}, 0, ErrNotNetns},
		{"add with another namespace", marshal(t, add), []string{"uts"}, 0, ErrNotNetns},
		{"add without uid", marshal(t, addNoUID), []string{"net"}, 0, errAny},
		{"keep", marshal(t, keep), nil, kindKeep, nil},
		{"keep with fd", marshal(t, keep), []string{"net"}, 0, ErrBadFDs},
		{"del", marshal(t, del), nil, kindDel, nil},
		{"del with fd", marshal(t, del), []string{"null"}, 0, ErrBadFDs},
		{"snapshot", marshal(t, snap), nil, kindSnapshot, nil},
		{"snapshot with fds", marshal(t, snap), []string{"net", "null"}, 0, ErrBadFDs},
		{"empty", nil, nil, 0, errAny},
		{"unknown oneof field", []byte{0x32, 0x00}, []string{"net"}, 0, errAny},
		{"garbage", []byte{0xff, 0xff, 0xff}, []string{"net"}, 0, errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fds := openFDs(t, tt.fds...)
			req, err := decodeRequest(tt.msg, fds)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("err = %v", err)
			case tt.wantErr != nil && err == nil:
				t.Fatalf("decoded %v, want an error", req.kind)
			case tt.wantErr != nil && tt.wantErr != errAny && !errors.Is(err, tt.wantErr):
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err == nil && req.kind != tt.want {
				t.Errorf("kind = %v, want %v", req.kind, tt.want)
			}
			for i, fd := range fds {
				handed := req.netns != nil && i == 0
				if fdOpen(fd) != handed {
					t.Errorf("fd %d open = %v, want %v", i, !handed, handed)
				}
			}
			if req.netns != nil {
				if req.uid != "u1" || req.info.GetName() != "p" {
					t.Errorf("decoded uid %q info %v", req.uid, req.info)
				}
				if err := checkNetns(int(req.netns.Fd())); err != nil {
					t.Error(err)
				}
				req.netns.Close()
			}
		})
	}
}

var errAny = errors.New("any error")
