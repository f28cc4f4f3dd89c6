package plugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ambient-lite/ambient-lite/cni/internal/pluginapi"
)

// DefaultTimeout bounds one command when the config sets no timeout.
const DefaultTimeout = 30 * time.Second

// Config is the plugin's entry in the conflist, as the runtime passes it on stdin. Unknown
// fields are rejected so a typo cannot silently fall back to a default.
//
//	{
//	  "type": "ambient-lite-cni",
//	  "kubeconfig": "/etc/cni/net.d/ambient-lite-kubeconfig",
//	  "agentSocket": "/var/run/ambient-lite/cni/plugin.sock",
//	  "timeout": "30s",
//	  "logLevel": "info"
//	}
type Config struct {
	// PluginConf holds the fields every plugin gets: cniVersion, name, type, capabilities,
	// ipam, dns, prevResult (parsed into PrevResult, in cniVersion's result format).
	types.PluginConf

	// AgentSocket is the node agent's unix socket. If empty, pluginapi.DefaultSocketPath.
	AgentSocket string `json:"agentSocket,omitempty"`
	// Kubeconfig is the path of the kubeconfig the node agent writes for the plugin (server,
	// CA, bearer token). Required: without the pod's labels the plugin cannot tell whether the
	// pod is enrolled.
	Kubeconfig string `json:"kubeconfig"`
	// Timeout bounds one command: the apiserver lookups with their retries, and the node
	// agent's answer (which waits for ztunnel's acknowledgement). A Go duration string such
	// as "30s". If empty, DefaultTimeout. ParseConfig stores the parsed value in
	// TimeoutDuration.
	Timeout         string        `json:"timeout,omitempty"`
	TimeoutDuration time.Duration `json:"-"`
	// LogLevel is debug, info, warn or error. If empty, info. Logs go to stderr, which the
	// runtime records.
	LogLevel string `json:"logLevel,omitempty"`

	// RuntimeConfig and Args are set by the runtime by convention (capabilities, CNI_ARGS
	// as JSON); accepted and ignored.
	RuntimeConfig json.RawMessage `json:"runtimeConfig,omitempty"`
	Args          json.RawMessage `json:"args,omitempty"`

	level slog.Level
}

// configFields are the plugin's own fields, named in the unknown-field error.
const configFields = "agentSocket, kubeconfig, timeout, logLevel"

// ParseConfig decodes and validates the plugin's config and parses its prevResult, if any.
// Errors name the offending field.
func ParseConfig(stdin []byte) (*Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(stdin))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("plugin config: %s", describeJSONError(err))
	}
	if dec.More() {
		return nil, errors.New("plugin config: unexpected data after the JSON object")
	}
	if c.Kubeconfig == "" {
		return nil, errors.New(`plugin config: field "kubeconfig" is required: the path of the kubeconfig the node agent writes for the plugin`)
	}
	if !filepath.IsAbs(c.Kubeconfig) {
		return nil, fmt.Errorf("plugin config: field \"kubeconfig\": %q is not an absolute path", c.Kubeconfig)
	}
	if c.AgentSocket == "" {
		c.AgentSocket = pluginapi.DefaultSocketPath
	} else if !filepath.IsAbs(c.AgentSocket) {
		return nil, fmt.Errorf("plugin config: field \"agentSocket\": %q is not an absolute path", c.AgentSocket)
	}
	c.TimeoutDuration = DefaultTimeout
	if c.Timeout != "" {
		d, err := time.ParseDuration(c.Timeout)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("plugin config: field \"timeout\": %q is not a positive duration such as \"30s\"", c.Timeout)
		}
		c.TimeoutDuration = d
	}
	if c.LogLevel != "" {
		if err := c.level.UnmarshalText([]byte(c.LogLevel)); err != nil {
			return nil, fmt.Errorf("plugin config: field \"logLevel\": %q is not one of debug, info, warn, error", c.LogLevel)
		}
	}
	if err := version.ParsePrevResult(&c.PluginConf); err != nil {
		return nil, fmt.Errorf("plugin config: field \"prevResult\": %w", err)
	}
	return &c, nil
}

// describeJSONError turns encoding/json's errors into messages naming the field.
func describeJSONError(err error) string {
	var (
		syntax *json.SyntaxError
		typ    *json.UnmarshalTypeError
	)
	switch {
	case errors.Is(err, io.EOF):
		return "empty; expected a JSON object"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "invalid JSON: unexpected end of input"
	case errors.As(err, &syntax):
		return fmt.Sprintf("invalid JSON at byte %d: %v", syntax.Offset, syntax)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return fmt.Sprintf("want a JSON object, got %s", typ.Value)
		}
		return fmt.Sprintf("field %q: want %s, got %s", typ.Field, jsonKind(typ.Type.Kind().String()), typ.Value)
	}
	msg := err.Error()
	if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		return fmt.Sprintf("unknown field %s (the plugin's own fields are %s)", f, configFields)
	}
	return strings.TrimPrefix(msg, "json: ")
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "map", "struct":
		return "an object"
	case "slice", "array":
		return "an array"
	}
	return "a number"
}
