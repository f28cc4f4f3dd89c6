package cluster_test

import (
	"context"
	"testing"

	"github.com/ambient-lite/ambient-lite/pkg/testenv"
	"github.com/ambient-lite/ambient-lite/tests/cluster"
)

// BenchmarkStart measures a cold control plane start (fresh PKI, empty etcd) until every
// component is ready and the CRDs are established, with etcd's and the apiserver's share.
// The target for `make cluster-up` is under 15 s.
func BenchmarkStart(b *testing.B) {
	if _, err := cluster.ResolveBinDir(""); err != nil {
		testenv.SkipOrFail(b, err.Error())
	}
	var etcd, api, ready float64
	for b.Loop() {
		c, err := cluster.Start(context.Background(), cluster.Options{})
		if err != nil {
			b.Fatal(err)
		}
		etcd += c.EtcdReady.Seconds()
		api += c.APIServerReady.Seconds()
		ready += c.Ready.Seconds()
		if err := c.Stop(); err != nil {
			b.Fatal(err)
		}
	}
	n := float64(b.N)
	b.ReportMetric(etcd/n, "s-etcd-ready")
	b.ReportMetric(api/n, "s-apiserver-ready")
	b.ReportMetric(ready/n, "s-all-ready")
}
