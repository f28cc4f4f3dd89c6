package proxy

import (
	"github.com/ambient-lite/ambient-lite/pkg/identity"
	"github.com/ambient-lite/ambient-lite/pkg/meshstate"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/metrics"
)

// connLabels fills Istio's TCP metric labels from what ztunnel knows of both ends. Any of
// src, dst and svc may be nil; srcID is the verified peer identity when src is unknown.
func connLabels(reporter string, src *meshstate.Workload, srcID identity.ID, dst *meshstate.Workload, svc *meshstate.Service, mtls bool) metrics.Labels {
	l := metrics.Labels{Reporter: reporter, RequestProtocol: "tcp", ConnectionSecurityPolicy: metrics.Unknown}
	if mtls {
		l.ConnectionSecurityPolicy = metrics.MutualTLS
	}
	if !srcID.IsZero() {
		l.SourcePrincipal = srcID.String()
		l.SourceWorkloadNamespace = srcID.Namespace()
	}
	if src != nil {
		l.SourceWorkload, l.SourceWorkloadNamespace = src.GetWorkloadName(), src.GetNamespace()
		l.SourcePrincipal = src.Identity.String()
		l.SourceCanonicalService, l.SourceCanonicalRevision = src.GetCanonicalName(), src.GetCanonicalRevision()
		l.SourceApp, l.SourceVersion, l.SourceCluster = src.GetCanonicalName(), src.GetCanonicalRevision(), src.GetClusterId()
	}
	if dst != nil {
		l.DestinationWorkload, l.DestinationWorkloadNamespace = dst.GetWorkloadName(), dst.GetNamespace()
		l.DestinationPrincipal = dst.Identity.String()
		l.DestinationCanonicalService, l.DestinationCanonicalRevision = dst.GetCanonicalName(), dst.GetCanonicalRevision()
		l.DestinationApp, l.DestinationVersion, l.DestinationCluster = dst.GetCanonicalName(), dst.GetCanonicalRevision(), dst.GetClusterId()
	}
	if svc != nil {
		l.DestinationService, l.DestinationServiceNamespace, l.DestinationServiceName = svc.GetHostname(), svc.GetNamespace(), svc.GetName()
	}
	return l
}
