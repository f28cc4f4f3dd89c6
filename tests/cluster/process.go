package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is one control plane binary running as a child of this process.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited and been reaped
	err     error         // its exit status; valid once done is closed
}

// launcher starts children from one OS thread that never exits. Children get Pdeathsig
// SIGKILL, which the kernel sends when the creating *thread* dies (go.dev/issue/27505); a
// test that locks a goroutine to a thread and lets it exit would otherwise kill them early.
type launcher struct {
	reqs chan launchReq
}

type launchReq struct {
	cmd   *exec.Cmd
	reply chan error
}

var sharedLauncher = sync.OnceValue(func() *launcher {
	l := &launcher{reqs: make(chan launchReq)}
	go func() {
		runtime.LockOSThread() // never unlocked: this thread lives as long as the process
		for r := range l.reqs {
			r.reply <- r.cmd.Start()
		}
	}()
	return l
})

// StartChild starts cmd so that it is killed when this process dies, however the test
// binary's threads come and go. It sets cmd.SysProcAttr.
func StartChild(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return sharedLauncher().start(cmd)
}

func (l *launcher) start(cmd *exec.Cmd) error {
	reply := make(chan error)
	l.reqs <- launchReq{cmd: cmd, reply: reply}
	return <-reply
}

// startProcess runs argv (with env, or this process's environment if nil), its stdout and
// stderr appended to logPath. A detached process outlives this one (its own session, no death
// signal): `cluster-up` uses that.
func startProcess(name string, argv, env []string, logPath string, detached bool) (*process, error) {
	return startProcessFiles(name, argv, env, logPath, detached)
}

// startProcessFiles is startProcess with files the child inherits as fd 3, 4, ...
func startProcessFiles(name string, argv, env []string, logPath string, detached bool, files ...*os.File) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening %s log: %w", name, err)
	}
	defer logFile.Close() // the child holds its own descriptor
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.ExtraFiles = files
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if detached {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		err = cmd.Start()
	} else {
		err = StartChild(cmd)
	}
	if err != nil {
		return nil, fmt.Errorf("starting %s (%s): %w", name, argv[0], err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended, and how.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// stop asks the process to terminate and kills it after grace. It returns once the
// process is reaped.
func (p *process) stop(grace time.Duration) {
	if ok, _ := p.exited(); ok {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// logTail returns the last lines of the process log, for error messages.
func logTail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// procStat returns the state (field 3 of /proc/<pid>/stat: R, S, Z, …) and start time (field
// 22, clock ticks since boot) of pid. The pid and start time together name a process
// unambiguously, so a stale state file never makes `cluster-down` signal an unrelated
// process that reused the pid.
func procStat(pid int) (state string, start uint64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, err
	}
	// The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	const startTimeField = 22 - 3 // fields after ")" start at field 3
	if len(fields) <= startTimeField {
		return "", 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	start, err = strconv.ParseUint(fields[startTimeField], 10, 64)
	return fields[0], start, err
}

func procStartTime(pid int) (uint64, error) {
	_, start, err := procStat(pid)
	return start, err
}

// killRecorded terminates the process recorded as (pid, start) if it still runs, waiting
// up to grace before SIGKILL, and returns once it is gone.
func killRecorded(pid int, start uint64, grace time.Duration) error {
	alive := func() bool {
		// A zombie (exited, not yet reaped by init) counts as gone.
		st, started, err := procStat(pid)
		return err == nil && started == start && st != "Z" && st != "X"
	}
	if !alive() {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signalling pid %d: %w", pid, err)
	}
	deadline := time.Now().Add(grace)
	killed := false
	for alive() {
		if time.Now().After(deadline) {
			if killed {
				return fmt.Errorf("pid %d survived SIGKILL for %s", pid, grace)
			}
			_ = syscall.Kill(pid, syscall.SIGKILL)
			killed, deadline = true, time.Now().Add(grace)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}
