// Package waypoint is istiod-lite's waypoint deployer, as istiod's gateway deployment controller
// does it for the istio-waypoint GatewayClass: it ensures the GatewayClass exists and is
// Accepted, renders a ServiceAccount, Deployment and Service for every Gateway of that class
// (Istio's waypoint template: names, labels, ports, ownerReferences), applies them server-side,
// and reports the Gateway's status (Accepted, Programmed, addresses, the HBONE listener).
//
// Deciding is pure (Render, GatewayStatus, ClassStatus: objects in, apply configurations out);
// the Deployer only watches, queues and applies. It is not the L7 configuration of waypoints
// (routes and policy go over xDS), it does not bind Services to waypoints (the
// istio.io/use-waypoint and istio.io/waypoint-for labels are read by the translation), and it
// never deletes: the objects it creates are owned by their Gateway, and Kubernetes' garbage
// collector removes them with it. Only istiod-lite's app imports it.
package waypoint

import (
	"maps"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-lite/ambient-lite/pkg/envconfig"
)

// Istio's names (pkg/config/constants, istio.io/api/label and annotation).
const (
	// ClassName is the GatewayClass of waypoints.
	ClassName = "istio-waypoint"
	// ControllerName is the GatewayClass controllerName istiod serves waypoints under.
	ControllerName gatewayv1.GatewayController = "istio.io/mesh-controller"
	// ControllerLabel is ControllerName with "/" replaced, the value of LabelManaged.
	ControllerLabel = "istio.io-mesh-controller"
	// ClassDescription is the description istiod gives the GatewayClass it creates.
	ClassDescription = "The default Istio waypoint GatewayClass"

	LabelGatewayName      = "gateway.networking.k8s.io/gateway-name"
	LabelGatewayClassName = "gateway.networking.k8s.io/gateway-class-name"
	LabelManaged          = "gateway.istio.io/managed"
	LabelDataplaneMode    = "istio.io/dataplane-mode"

	// AnnotationNameOverride names the Deployment and Service instead of the Gateway's name.
	AnnotationNameOverride = "gateway.istio.io/name-override"
	// AnnotationServiceAccount names the ServiceAccount instead of the Gateway's name.
	AnnotationServiceAccount = "gateway.istio.io/service-account"

	// ContainerName is the proxy container, named as Istio's.
	ContainerName = "istio-proxy"

	PortHBONE  = 15008
	PortStatus = 15021
	PortStats  = 15020

	// TokenAudience, TokenPath and RootCertDir are where the waypoint finds its credentials.
	TokenAudience = "istio-ca"
	TokenPath     = "/var/run/secrets/tokens/istio-token"
	RootCertDir   = "/var/run/secrets/istio"
	// RootConfigMap holds the mesh root, published by istiod-lite to every namespace.
	RootConfigMap = "istio-ca-root-cert"

	tokenExpirationSeconds  = 43200 // as ztunnel's and the waypoint's charts
	terminationGraceSeconds = 30
	proxyUID                = 1337 // Istio's proxy user and group
)

// Environment variables the waypoint binary reads.
const (
	EnvPodName        = "POD_NAME"
	EnvPodNamespace   = "POD_NAMESPACE"
	EnvInstanceIP     = "INSTANCE_IP"
	EnvGatewayName    = "GATEWAY_NAME"
	EnvServiceAccount = "SERVICE_ACCOUNT"
	EnvCAAddress      = "CA_ADDRESS"
	EnvXDSAddress     = "XDS_ADDRESS"
	EnvCAServerName   = "CA_SERVER_NAME"
	EnvTrustDomain    = "TRUST_DOMAIN"
)

// omittedAnnotations are Gateway annotations istiod does not copy onto the objects it renders.
var omittedAnnotations = []string{
	"kubectl.kubernetes.io/last-applied-configuration",
	AnnotationNameOverride,
	AnnotationServiceAccount,
	"gateway.istio.io/controller-version",
}

// RenderOptions is what the rendered Deployment needs besides the Gateway.
type RenderOptions struct {
	// Image is the waypoint image; required.
	Image string
	// PullPolicy of the image; empty means IfNotPresent.
	PullPolicy corev1.PullPolicy
	// CAAddress and XDSAddress are istiod-lite's host:port for certificates and xDS; required.
	CAAddress, XDSAddress string
	// CAServerName is the name istiod-lite's serving certificate is checked for; empty leaves
	// CA_SERVER_NAME unset (the waypoint's default, istiod.istio-system.svc).
	CAServerName string
	// TrustDomain of the mesh; empty leaves TRUST_DOMAIN unset (the waypoint's default).
	TrustDomain string
}

// Objects are what one waypoint Gateway is deployed as.
type Objects struct {
	ServiceAccount *corev1ac.ServiceAccountApplyConfiguration
	Deployment     *appsv1ac.DeploymentApplyConfiguration
	Service        *corev1ac.ServiceApplyConfiguration
}

// DeploymentName is the name of a Gateway's Deployment and Service: the Gateway's name (the
// waypoint class has no class suffix), or the gateway.istio.io/name-override annotation.
func DeploymentName(gw *gatewayv1.Gateway) string {
	if v := gw.Annotations[AnnotationNameOverride]; v != "" {
		return v
	}
	return gw.Name
}

// ServiceAccountName is the name of a Gateway's ServiceAccount: the Gateway's name, or the
// gateway.istio.io/service-account annotation.
func ServiceAccountName(gw *gatewayv1.Gateway) string {
	if v := gw.Annotations[AnnotationServiceAccount]; v != "" {
		return v
	}
	return gw.Name
}

// Render returns the objects istiod's waypoint template renders for gw. Labels and annotations
// are the Gateway's own (or spec.infrastructure's, when set), as istiod copies them, with
// Istio's labels on top; the istio.io/waypoint-for label is carried along as metadata only.
func Render(gw *gatewayv1.Gateway, opts RenderOptions) Objects {
	name, sa := DeploymentName(gw), ServiceAccountName(gw)
	infraLabels, infraAnnotations := infrastructure(gw)
	class := string(gw.Spec.GatewayClassName)
	objLabels := merge(infraLabels, map[string]string{
		LabelGatewayName:      gw.Name,
		LabelGatewayClassName: class,
		LabelManaged:          ControllerLabel, // istiod sets it on every object it applies
	})
	owner := metav1ac.OwnerReference().
		WithAPIVersion(gatewayv1.GroupVersion.String()).WithKind("Gateway").
		WithName(gw.Name).WithUID(gw.UID)
	selector := map[string]string{LabelGatewayName: gw.Name}

	serviceAccount := corev1ac.ServiceAccount(sa, gw.Namespace).
		WithLabels(objLabels).WithOwnerReferences(owner)
	if len(infraAnnotations) > 0 {
		serviceAccount.WithAnnotations(infraAnnotations)
	}

	podLabels := merge(map[string]string{
		"sidecar.istio.io/inject":             "false",
		LabelDataplaneMode:                    "none",
		"service.istio.io/canonical-name":     name,
		"service.istio.io/canonical-revision": "latest",
	}, infraLabels, map[string]string{
		LabelGatewayName:      gw.Name,
		LabelGatewayClassName: class,
		LabelManaged:          ControllerLabel,
	})
	podAnnotations := merge(infraAnnotations, map[string]string{
		"istio.io/rev": "default",
		// The waypoint serves Prometheus metrics on /metrics, as ztunnel does (Istio's Envoy
		// waypoint uses /stats/prometheus).
		"prometheus.io/path":   "/metrics",
		"prometheus.io/port":   "15020",
		"prometheus.io/scrape": "true",
	})
	pullPolicy := opts.PullPolicy
	if pullPolicy == "" {
		pullPolicy = corev1.PullIfNotPresent
	}
	probe := func(failures, period int32) *corev1ac.ProbeApplyConfiguration {
		return corev1ac.Probe().
			WithHTTPGet(corev1ac.HTTPGetAction().WithPath("/healthz/ready").WithPort(intstr.FromInt32(PortStatus)).WithScheme(corev1.URISchemeHTTP)).
			WithFailureThreshold(failures).WithPeriodSeconds(period).WithSuccessThreshold(1).WithTimeoutSeconds(1)
	}
	// fieldRef is atomic: its defaulted apiVersion is part of what the apply owns, so it is
	// spelled out for the applied and the stored object to compare equal.
	fieldEnv := func(name, path string) *corev1ac.EnvVarApplyConfiguration {
		return corev1ac.EnvVar().WithName(name).WithValueFrom(corev1ac.EnvVarSource().WithFieldRef(corev1ac.ObjectFieldSelector().WithAPIVersion("v1").WithFieldPath(path)))
	}
	env := []*corev1ac.EnvVarApplyConfiguration{
		fieldEnv(EnvPodName, "metadata.name"),
		fieldEnv(EnvPodNamespace, "metadata.namespace"),
		fieldEnv(EnvInstanceIP, "status.podIP"),
		fieldEnv(EnvServiceAccount, "spec.serviceAccountName"),
		corev1ac.EnvVar().WithName(EnvGatewayName).WithValue(gw.Name),
		corev1ac.EnvVar().WithName(EnvCAAddress).WithValue(opts.CAAddress),
		corev1ac.EnvVar().WithName(EnvXDSAddress).WithValue(opts.XDSAddress),
		// The Go runtime setting every data-plane process runs with (see its doc).
		corev1ac.EnvVar().WithName("GODEBUG").WithValue(envconfig.DataPlaneGODEBUG),
	}
	if opts.CAServerName != "" {
		env = append(env, corev1ac.EnvVar().WithName(EnvCAServerName).WithValue(opts.CAServerName))
	}
	if opts.TrustDomain != "" {
		env = append(env, corev1ac.EnvVar().WithName(EnvTrustDomain).WithValue(opts.TrustDomain))
	}
	container := corev1ac.Container().
		WithName(ContainerName).
		WithImage(opts.Image).WithImagePullPolicy(pullPolicy).
		WithPorts(
			corev1ac.ContainerPort().WithName("metrics").WithContainerPort(PortStats).WithProtocol(corev1.ProtocolTCP),
			corev1ac.ContainerPort().WithName("status-port").WithContainerPort(PortStatus).WithProtocol(corev1.ProtocolTCP),
		).
		WithEnv(env...).
		WithStartupProbe(probe(30, 1).WithInitialDelaySeconds(1)).
		WithReadinessProbe(probe(4, 15)).
		WithSecurityContext(corev1ac.SecurityContext().
			WithPrivileged(false).
			WithRunAsUser(proxyUID).WithRunAsGroup(proxyUID).WithRunAsNonRoot(true).
			WithAllowPrivilegeEscalation(false).WithReadOnlyRootFilesystem(true).
			WithCapabilities(corev1ac.Capabilities().WithDrop("ALL"))).
		WithVolumeMounts(
			corev1ac.VolumeMount().WithName("istiod-ca-cert").WithMountPath(RootCertDir),
			corev1ac.VolumeMount().WithName("istio-token").WithMountPath(strings.TrimSuffix(TokenPath, "/istio-token")),
		)
	deployment := appsv1ac.Deployment(name, gw.Namespace).
		WithLabels(objLabels).WithOwnerReferences(owner).
		WithSpec(appsv1ac.DeploymentSpec().
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(selector)).
			WithTemplate(corev1ac.PodTemplateSpec().
				WithLabels(podLabels).WithAnnotations(podAnnotations).
				WithSpec(corev1ac.PodSpec().
					WithServiceAccountName(sa).
					WithTerminationGracePeriodSeconds(terminationGraceSeconds).
					WithContainers(container).
					WithVolumes(
						corev1ac.Volume().WithName("istio-token").WithProjected(corev1ac.ProjectedVolumeSource().WithSources(
							corev1ac.VolumeProjection().WithServiceAccountToken(corev1ac.ServiceAccountTokenProjection().
								WithAudience(TokenAudience).WithExpirationSeconds(tokenExpirationSeconds).WithPath("istio-token")))),
						corev1ac.Volume().WithName("istiod-ca-cert").WithConfigMap(corev1ac.ConfigMapVolumeSource().WithName(RootConfigMap)),
					))))
	if len(infraAnnotations) > 0 {
		deployment.WithAnnotations(infraAnnotations)
	}

	service := corev1ac.Service(name, gw.Namespace).
		WithLabels(objLabels).
		WithAnnotations(merge(map[string]string{"networking.istio.io/traffic-distribution": "PreferClose"}, infraAnnotations)).
		WithOwnerReferences(owner).
		WithSpec(corev1ac.ServiceSpec().
			WithType(corev1.ServiceTypeClusterIP).
			WithIPFamilyPolicy(corev1.IPFamilyPolicyPreferDualStack).
			WithSelector(selector).
			WithPorts(servicePorts(gw)...))
	return Objects{ServiceAccount: serviceAccount, Deployment: deployment, Service: service}
}

// servicePorts are istiod's: the status port, then one per distinct listener port, named after
// the listener, with the listener's protocol in lower case as appProtocol (hbone for 15008).
func servicePorts(gw *gatewayv1.Gateway) []*corev1ac.ServicePortApplyConfiguration {
	ports := []*corev1ac.ServicePortApplyConfiguration{
		corev1ac.ServicePort().WithName("status-port").WithPort(PortStatus).WithProtocol(corev1.ProtocolTCP).WithAppProtocol("tcp"),
	}
	seen := map[gatewayv1.PortNumber]bool{}
	used := map[string]bool{"status-port": true}
	for i, l := range gw.Spec.Listeners {
		if seen[l.Port] {
			continue
		}
		seen[l.Port] = true
		name := strings.ReplaceAll(string(l.Name), ".", "-")
		if name == "" {
			name = strings.ToLower(string(l.Protocol)) + "-" + strconv.Itoa(i)
		}
		name = uniquePortName(name, int32(l.Port), used)
		ports = append(ports, corev1ac.ServicePort().WithName(name).WithPort(int32(l.Port)).
			WithProtocol(corev1.ProtocolTCP).WithAppProtocol(strings.ToLower(string(l.Protocol))))
	}
	return ports
}

// uniquePortName is istiod's: names are cut to 63 characters and made unique with -<port>.
func uniquePortName(name string, port int32, used map[string]bool) string {
	if len(name) > 63 {
		name = name[:63]
	}
	candidate := name
	for suffix := "-" + strconv.Itoa(int(port)); used[candidate]; suffix += "x" {
		trimmed := name
		if len(trimmed)+len(suffix) > 63 {
			trimmed = trimmed[:63-len(suffix)]
		}
		candidate = trimmed + suffix
	}
	used[candidate] = true
	return candidate
}

// infrastructure returns the labels and annotations istiod copies onto the rendered objects:
// spec.infrastructure's when set (without gateway.networking.k8s.io/ keys), otherwise the
// Gateway's own; annotations lose the ones istiod omits.
func infrastructure(gw *gatewayv1.Gateway) (labels, annotations map[string]string) {
	labels, annotations = maps.Clone(gw.Labels), maps.Clone(gw.Annotations)
	if infra := gw.Spec.Infrastructure; infra != nil {
		if infra.Labels != nil {
			labels = translateInfra(infra.Labels)
		}
		if infra.Annotations != nil {
			annotations = translateInfra(infra.Annotations)
		}
	}
	for _, k := range omittedAnnotations {
		delete(annotations, k)
	}
	return labels, annotations
}

func translateInfra[K, V ~string](m map[K]V) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		if !strings.HasPrefix(string(k), "gateway.networking.k8s.io/") {
			out[string(k)] = string(v)
		}
	}
	return out
}

// merge returns the union of ms, later maps winning.
func merge(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		maps.Copy(out, m)
	}
	return out
}

// isManaged reports whether an existing object carries istiod's managed label: only such
// objects are overwritten, as istiod refuses to take over a user's own Deployment or Service.
func isManaged(labels map[string]string) bool {
	_, ok := labels[LabelManaged]
	return ok
}
