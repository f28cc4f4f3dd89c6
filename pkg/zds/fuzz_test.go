//go:build linux

package zds

import (
	"testing"

	"istio.io/istio/pkg/zdsapi"
)

// FuzzDecodeRequest feeds arbitrary datagrams with up to 7 fds (a mix of netns, other
// namespace and plain files, chosen by the fd mask) to the client's decoder: it must
// never panic, and every fd must end up closed or handed over in the request.
func FuzzDecodeRequest(f *testing.F) {
	add := &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Add{Add: &zdsapi.AddWorkload{Uid: "u", WorkloadInfo: info("p")}}}
	f.Add(marshal(f, add), uint8(1), uint8(0))
	f.Add(marshal(f, add), uint8(2), uint8(0))
	f.Add(marshal(f, add), uint8(1), uint8(1))
	f.Add(marshal(f, &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Keep{Keep: &zdsapi.KeepWorkload{Uid: "u"}}}), uint8(0), uint8(0))
	f.Add(marshal(f, &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_Del{Del: &zdsapi.DelWorkload{Uid: "u"}}}), uint8(1), uint8(2))
	f.Add(marshal(f, &zdsapi.WorkloadRequest{Payload: &zdsapi.WorkloadRequest_SnapshotSent{SnapshotSent: &zdsapi.SnapshotSent{}}}), uint8(0), uint8(0))
	f.Add([]byte{}, uint8(3), uint8(5))
	f.Fuzz(func(t *testing.T, data []byte, nfds, kinds uint8) {
		names := []string{"net", "null", "uts"}
		var ks []string
		for i := range int(nfds % 8) {
			ks = append(ks, names[(int(kinds)>>(i%4*2))%3])
		}
		fds := openFDs(t, ks...)
		req, err := decodeRequest(data, fds)
		if err == nil && req.kind == 0 {
			t.Fatal("decoded a request without a kind")
		}
		if (req.netns != nil) != (err == nil && req.kind == kindAdd) {
			t.Fatalf("netns %v for kind %v, err %v", req.netns, req.kind, err)
		}
		for i, fd := range fds {
			if handed := req.netns != nil && i == 0; fdOpen(fd) != handed {
				t.Fatalf("fd %d (%s) open = %v after decode (err %v)", i, ks[i], !handed, err)
			}
		}
		if req.netns != nil {
			req.netns.Close()
		}
	})
}
