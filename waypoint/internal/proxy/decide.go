package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"

	"istio.io/istio/pkg/workloadapi"

	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/waypoint/internal/l7config"
)

// protocol is how a stream is served.
type protocol uint8

const (
	protoSniff protocol = iota // decide from the first bytes
	protoHTTP
	protoTCP
)

func (p protocol) String() string { return [...]string{"sniff", "http", "tcp"}[p] }

// plan is the decision for one CONNECT, before any byte of the stream is read.
type plan struct {
	Proto protocol
	// H2Upstream: the Service port speaks HTTP/2 (HTTP2, GRPC): talk h2c upstream. Unless
	// the port names its protocol (SameUpstream false), upstream uses the downstream's.
	H2Upstream   bool
	SameUpstream bool
	// Key names the route configuration; Table and VHost are its compiled form and the
	// virtual host of the target port.
	Key   string
	Table *l7config.Table
	VHost *l7config.VirtualHost
	// Service is the Service addressed by VIP; Workload the workload addressed by pod IP.
	Service  *meshstate.Service
	Workload *meshstate.Workload
	Target   netip.AddrPort
}

// errDecide carries the status a refused CONNECT is answered with.
type errDecide struct {
	code int
	err  error
}

func (e *errDecide) Error() string { return e.err.Error() }
func (e *errDecide) Unwrap() error { return e.err }

func refuse(code int, format string, args ...any) error {
	return &errDecide{code: code, err: fmt.Errorf(format, args...)}
}

// decide finds what a CONNECT to target addresses and which route configuration applies:
// a Service VIP takes `<namespace>/<hostname>`, a workload IP the Gateway's own
// configuration (gatewayKey). The protocol is the Service port's app_protocol when it
// names one, else sniffed.
func decide(snap *meshstate.Snapshot, tables l7config.Tables, gatewayKey string, target netip.AddrPort) (plan, error) {
	p := plan{Target: target}
	if svc, ok := snap.ServiceByVIP(target.Addr()); ok {
		p.Service, p.Key = svc, svc.Key
		var sp *workloadapi.Port
		for _, port := range svc.GetPorts() {
			if port.GetServicePort() == uint32(target.Port()) {
				sp = port
				break
			}
		}
		if sp == nil {
			return p, refuse(http.StatusServiceUnavailable, "service %s has no port %d", svc.Key, target.Port())
		}
		switch sp.GetAppProtocol() {
		case workloadapi.AppProtocol_HTTP11:
			p.Proto = protoHTTP
		case workloadapi.AppProtocol_HTTP2, workloadapi.AppProtocol_GRPC:
			p.Proto, p.H2Upstream = protoHTTP, true
		case workloadapi.AppProtocol_TCP, workloadapi.AppProtocol_TLS:
			p.Proto = protoTCP
		default:
			p.Proto, p.SameUpstream = protoSniff, true
		}
	} else if w, ok := snap.WorkloadByIP(target.Addr()); ok {
		p.Workload, p.Key, p.Proto, p.SameUpstream = w, gatewayKey, protoSniff, true
	} else {
		return p, refuse(http.StatusBadRequest, "%s is neither a known service nor a known workload", target)
	}
	t, ok := tables[p.Key]
	if !ok {
		return p, refuse(http.StatusServiceUnavailable, "no route configuration %s", p.Key)
	}
	p.Table, p.VHost = t, t.VirtualHost(target.Port())
	if p.VHost == nil {
		return p, refuse(http.StatusServiceUnavailable, "route configuration %s has no virtual host for port %d", p.Key, target.Port())
	}
	return p, nil
}

// Errors of resolve.
var (
	errNoService  = errors.New("no such service")
	errNoEndpoint = errors.New("no healthy upstream")
)

// resolve maps a cluster to the endpoint to dial. OriginalDst goes to original (a
// workload); `outbound|port||hostname` to a healthy endpoint of the Service, pick choosing
// among them. The result is never a waypoint: the waypoint is the Service's waypoint.
func resolve(snap *meshstate.Snapshot, hosts *hostIndex, cl l7config.Cluster, original netip.AddrPort, pick func(int) int) (meshstate.Route, error) {
	if cl.OriginalDst {
		r, err := snap.Direct(original, pick)
		if err == nil && r.Kind == meshstate.Passthrough {
			return r, fmt.Errorf("%s: %w", original, errNoEndpoint)
		}
		return r, err
	}
	svc := hosts.lookup(snap, cl.Hostname)
	if svc == nil {
		return meshstate.Route{}, fmt.Errorf("%s: %w", cl.Hostname, errNoService)
	}
	return serviceEndpoint(snap, svc, cl.Port, pick)
}

// serviceEndpoint picks an endpoint of svc's port, without waypoint redirection.
func serviceEndpoint(snap *meshstate.Snapshot, svc *meshstate.Service, port uint16, pick func(int) int) (meshstate.Route, error) {
	r, err := snap.DirectToService(svc, port, pick)
	if errors.Is(err, meshstate.ErrNoEndpoints) {
		return r, fmt.Errorf("%w: %w", errNoEndpoint, err)
	}
	return r, err
}
