package proxy

import (
	"sync"

	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
)

// hostIndex finds a Service by hostname, rebuilt when the snapshot changes.
type hostIndex struct {
	mu     sync.Mutex
	snap   *meshstate.Snapshot
	byHost map[string]*meshstate.Service
}

func (h *hostIndex) lookup(snap *meshstate.Snapshot, hostname string) *meshstate.Service {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.snap != snap {
		h.snap, h.byHost = snap, map[string]*meshstate.Service{}
		snap.Services(func(s *meshstate.Service) {
			// Two namespaces cannot share a cluster-local hostname; keep the smaller key.
			if old, ok := h.byHost[s.GetHostname()]; !ok || s.Key < old.Key {
				h.byHost[s.GetHostname()] = s
			}
		})
	}
	return h.byHost[hostname]
}
