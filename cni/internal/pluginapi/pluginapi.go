// Package pluginapi is the wire contract between the CNI plugin and the CNI node agent:
// HTTP/1.1 over a unix socket with JSON bodies.
//
//	POST /v1/enrollment EnrollmentRequest → 200 EnrollmentResponse: is the pod in the mesh?
//	POST /v1/add    AddRequest   → 200 AddResponse: redirection is in place and ztunnel acked the pod
//	POST /v1/del    DelRequest   → 200 {}: the pod is forgotten (also when it was never known)
//	POST /v1/check  CheckRequest → 200 {}: redirection is present for the pod
//	GET  /v1/check?podName=&podNamespace=&podUID=&containerID=&netns=  (same as POST)
//	GET  /v1/ping                → 200 {}: the agent is serving
//
// Any other answer is a non-2xx status with an [ErrorResponse] body. Malformed or incomplete
// requests get 400, the agent's own failures 500, and 503 means the agent cannot serve yet
// ([ErrUnavailable]; it is starting): ask again. Unknown JSON fields are ignored so a plugin
// binary and an agent one release apart still understand each other.
//
// The plugin uses [Client]; the node agent implements [Agent] and serves [Handler]. The package
// knows nothing of enrollment, redirection or ZDS: that is the agent's business.
package pluginapi

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// DefaultSocketPath is where the node agent listens unless configured otherwise.
const DefaultSocketPath = "/var/run/ambient-lite/cni/plugin.sock"

// The request paths.
const (
	PathEnrollment = "/v1/enrollment"
	PathAdd        = "/v1/add"
	PathDel        = "/v1/del"
	PathCheck      = "/v1/check"
	PathPing       = "/v1/ping"
)

// AddRequest asks the agent to redirect a new pod's traffic to ztunnel. The plugin sends it
// from CNI ADD, after the primary plugin set up the pod's network.
type AddRequest struct {
	PodName      string `json:"podName"`
	PodNamespace string `json:"podNamespace"`
	// PodUID is K8S_POD_UID from CNI_ARGS; empty if the runtime does not pass it.
	PodUID      string `json:"podUID,omitempty"`
	ContainerID string `json:"containerID"`
	// Netns is the path of the pod's network namespace (CNI_NETNS).
	Netns string `json:"netns"`
	// IfName is the pod's interface (CNI_IFNAME); informational.
	IfName string `json:"ifName,omitempty"`
	// PodIPs are the pod's addresses from the primary plugin's result; at least one.
	PodIPs []string `json:"podIPs"`
}

// AddResponse is the agent's answer to a successful AddRequest.
type AddResponse struct {
	// Redirected is true when the pod's traffic is redirected and ztunnel acknowledged the
	// pod. The plugin fails the ADD unless it is true.
	Redirected bool `json:"redirected"`
}

// EnrollmentRequest asks the agent whether a pod is enrolled in the mesh, as the agent sees
// it (its caches, or the apiserver over its warm connection). The plugin asks it first and
// reads the apiserver itself only when the agent does not answer.
type EnrollmentRequest struct {
	PodName      string `json:"podName"`
	PodNamespace string `json:"podNamespace"`
	// PodUID is K8S_POD_UID; when set, a pod with another uid is an error (recreated).
	PodUID string `json:"podUID,omitempty"`
}

// EnrollmentResponse answers an EnrollmentRequest.
type EnrollmentResponse struct {
	Enrolled bool `json:"enrolled"`
}

// Validate reports the missing fields.
func (r EnrollmentRequest) Validate() error {
	return required("podName", r.PodName, "podNamespace", r.PodNamespace)
}

// DelRequest tells the agent a pod's sandbox is being torn down. It may arrive more than once,
// or for a pod the agent never saw; both are successes.
type DelRequest struct {
	PodName      string `json:"podName"`
	PodNamespace string `json:"podNamespace"`
	PodUID       string `json:"podUID,omitempty"`
	ContainerID  string `json:"containerID"`
	// Netns may be empty: the runtime may have already released the namespace.
	Netns string `json:"netns,omitempty"`
}

// CheckRequest asks whether redirection is (still) present for a pod (CNI CHECK).
type CheckRequest struct {
	PodName      string `json:"podName"`
	PodNamespace string `json:"podNamespace"`
	PodUID       string `json:"podUID,omitempty"`
	ContainerID  string `json:"containerID"`
	Netns        string `json:"netns"`
}

// ErrUnavailable is wrapped by an [Agent]'s errors that mean "not yet": the agent is
// starting and cannot serve the request now, but will shortly. [Handler] answers them
// with 503 Service Unavailable, and the plugin tries again until its timeout.
var ErrUnavailable = errors.New("node agent unavailable")

// ErrorResponse is the body of every non-2xx answer.
type ErrorResponse struct {
	Error string `json:"error"`
}

// Agent is what the node agent implements; [Handler] serves it. Requests reach it already
// validated. Methods may be called concurrently and should honour ctx, which ends when the
// plugin gives up.
type Agent interface {
	// Enrollment reports whether the pod is enrolled in the ambient mesh.
	Enrollment(ctx context.Context, req EnrollmentRequest) (EnrollmentResponse, error)
	// Add returns once the pod's traffic is redirected and ztunnel acknowledged it, with
	// Redirected true; an error's message reaches the runtime, so it should say what to fix.
	Add(ctx context.Context, req AddRequest) (AddResponse, error)
	// Del forgets the pod; it must succeed for unknown pods.
	Del(ctx context.Context, req DelRequest) error
	// Check returns an error unless redirection is present for the pod.
	Check(ctx context.Context, req CheckRequest) error
}

// Validate reports the missing or malformed fields.
func (r AddRequest) Validate() error {
	if err := required("podName", r.PodName, "podNamespace", r.PodNamespace,
		"containerID", r.ContainerID, "netns", r.Netns); err != nil {
		return err
	}
	if len(r.PodIPs) == 0 {
		return errors.New("podIPs: at least one pod IP is required")
	}
	for _, ip := range r.PodIPs {
		if _, err := netip.ParseAddr(ip); err != nil {
			return fmt.Errorf("podIPs: %q is not an IP address", ip)
		}
	}
	return nil
}

// Validate reports the missing fields.
func (r DelRequest) Validate() error {
	return required("podName", r.PodName, "podNamespace", r.PodNamespace, "containerID", r.ContainerID)
}

// Validate reports the missing fields.
func (r CheckRequest) Validate() error {
	return required("podName", r.PodName, "podNamespace", r.PodNamespace,
		"containerID", r.ContainerID, "netns", r.Netns)
}

// required takes name, value pairs and names every empty value.
func required(kv ...string) error {
	var missing []string
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "" {
			missing = append(missing, kv[i])
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing required field(s): %s", strings.Join(missing, ", "))
	}
	return nil
}
