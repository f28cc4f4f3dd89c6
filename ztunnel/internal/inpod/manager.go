// Package inpod is ztunnel's in-pod mode: the workload manager that applies the CNI node
// agent's ZDS requests (it implements pkg/zds.Handler) by starting and stopping one
// listener set per pod, with :15001 (outbound), :15006 (inbound plaintext) and :15008
// (inbound HBONE) opened inside the pod's network namespace, registered with the pod's
// eBPF redirection (pkg/capture), and served by the proxy with a dialer that connects
// from inside that namespace with ztunnel's socket mark.
//
// It is not the ZDS protocol (pkg/zds), nor the proxy logic (ztunnel/internal/proxy), nor
// the redirection itself: the CNI installs that, and when it did not (netfilter capture)
// the listeners serve connections whose original destination comes from SO_ORIGINAL_DST.
// It knows nothing of Kubernetes beyond the pod names ZDS carries.
package inpod

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/ambient-lite/ambient-lite/pkg/zds"
	"github.com/ambient-lite/ambient-lite/ztunnel/internal/socket"
	"istio.io/istio/pkg/zdsapi"
)

// Pod is the running listener set of one pod.
type Pod interface {
	// Stop closes the pod's listeners at once; connections already accepted go on.
	Stop()
	// Drain (after Stop) lets the pod's connections finish for up to d, then cuts the
	// rest, and returns once nothing of the pod is left running.
	Drain(d time.Duration)
}

// StartFunc opens and serves the listeners of one pod inside its network namespace netns.
// The manager keeps netns open until the pod has drained. Its error says what failed; the
// manager adds the pod's name.
type StartFunc func(uid string, info *zdsapi.WorkloadInfo, netns *os.File) (Pod, error)

// Options configure a Manager.
type Options struct {
	// Start opens a pod's listeners. Required.
	Start StartFunc
	// Drain is how long a removed pod's open connections may go on before they are cut.
	Drain time.Duration
	// Log receives pod events. If nil, slog.Default().
	Log *slog.Logger
}

// Manager runs the listener sets of the pods the node agent names. It implements
// zds.Handler; its methods are safe for concurrent use.
type Manager struct {
	opts Options
	log  *slog.Logger

	mu     sync.Mutex
	pods   map[string]*entry
	closed bool
	// draining counts the pods retired but not yet drained.
	draining sync.WaitGroup
	// netnsID identifies a namespace (socket.NetnsID; tests replace it).
	netnsID func(*os.File) (uint64, error)
}

var _ zds.Handler = (*Manager)(nil)

// entry is one served pod.
type entry struct {
	name    string
	pod     Pod
	netns   *os.File
	netnsID uint64
}

// New validates opts and returns a Manager serving no pod.
func New(opts Options) (*Manager, error) {
	if opts.Start == nil {
		return nil, errors.New("inpod: Options.Start is required")
	}
	if opts.Drain < 0 {
		return nil, errors.New("inpod: Options.Drain is negative")
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	return &Manager{opts: opts, log: opts.Log, pods: map[string]*entry{}, netnsID: socket.NetnsID}, nil
}

// PodName is how errors and logs name a pod: "namespace/name (uid)", or the uid alone.
func PodName(uid string, info *zdsapi.WorkloadInfo) string {
	if info.GetName() == "" {
		return "uid " + uid
	}
	return fmt.Sprintf("%s/%s (uid %s)", info.GetNamespace(), info.GetName(), uid)
}

// Add starts serving the pod uid in netns. A replay of a pod already served in the same
// network namespace keeps the running listeners; a pod whose namespace changed is
// restarted in the new one.
func (m *Manager) Add(uid string, info *zdsapi.WorkloadInfo, netns *os.File) error {
	name := PodName(uid, info)
	if err := socket.IsNetns(netns); err != nil {
		return fmt.Errorf("pod %s: %w", name, err)
	}
	id, err := m.netnsID(netns)
	if err != nil {
		return fmt.Errorf("pod %s: %w", name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("pod %s: ztunnel is shutting down", name)
	}
	if old, ok := m.pods[uid]; ok {
		if old.netnsID == id {
			_ = netns.Close() // already served there
			return nil
		}
		m.log.Info("pod network namespace changed, restarting its listeners", "pod", name)
		m.retireLocked(uid)
	}
	pod, err := m.opts.Start(uid, info, netns)
	if err != nil {
		return fmt.Errorf("pod %s: %w", name, err)
	}
	m.pods[uid] = &entry{name: name, pod: pod, netns: netns, netnsID: id}
	m.log.Info("serving pod", "pod", name)
	return nil
}

// Keep keeps the pod uid as it is: the node agent has no netns to send for it. A pod not
// served stays unserved (there is no namespace to serve it in).
func (m *Manager) Keep(uid string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.pods[uid]; !ok {
		m.log.Warn("node agent kept a pod ztunnel does not serve; its traffic stays refused until it is added", "uid", uid)
	}
	return nil
}

// Del stops serving the pod uid: its listeners are closed before Del returns, its open
// connections may go on for the drain period. An unknown uid is not an error.
func (m *Manager) Del(uid string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.retireLocked(uid)
	return nil
}

// SnapshotSent stops serving every pod not in present.
func (m *Manager) SnapshotSent(present []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for uid := range m.pods {
		if !slices.Contains(present, uid) {
			m.retireLocked(uid)
		}
	}
	m.log.Info("pod snapshot applied", "pods", len(m.pods))
	return nil
}

// Pods returns the uids served, sorted.
func (m *Manager) Pods() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	uids := make([]string, 0, len(m.pods))
	for uid := range m.pods {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	return uids
}

// Close stops every pod, lets their connections drain (all at once, for up to the drain
// period) and returns once they are gone. Add fails afterwards. It is idempotent.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	for uid := range m.pods {
		m.retireLocked(uid)
	}
	m.mu.Unlock()
	m.draining.Wait()
}

// retireLocked stops the pod uid's listeners now and drains it in the background,
// closing its netns once nothing uses it.
func (m *Manager) retireLocked(uid string) {
	e, ok := m.pods[uid]
	if !ok {
		return
	}
	delete(m.pods, uid)
	e.pod.Stop()
	m.log.Info("stopped serving pod", "pod", e.name, "drain", m.opts.Drain)
	m.draining.Go(func() {
		e.pod.Drain(m.opts.Drain)
		_ = e.netns.Close()
	})
}
