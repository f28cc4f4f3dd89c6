package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"github.com/ambient-lite/ambient-lite/cni/internal/plugin"
)

// This file holds the pure half of the installer: what the primary CNI config becomes with the
// plugin chained in or taken out. Nothing here touches the file system.

// Extensions of the files container runtimes read from the CNI config directory, as kubelet and
// Istio's installer consider them.
const (
	extConf     = ".conf"
	extConflist = ".conflist"
)

// isConfigFile reports whether name is a network config the runtime may load.
func isConfigFile(name string) bool {
	ext := filepath.Ext(name)
	return ext == extConf || ext == extConflist
}

// member is one key of a JSON object with its value as the document spelled it.
type member struct {
	key   string
	value json.RawMessage
}

// object is a JSON object that keeps its keys in document order and its values byte for byte,
// so that rewriting one key leaves everything else as the primary CNI wrote it, including
// fields this package has never heard of.
type object []member

// parseObject decodes data, which must be exactly one JSON object.
func parseObject(data []byte) (object, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("empty; want a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, describeJSONError(err, dec)
	}
	if tok != json.Delim('{') {
		return nil, fmt.Errorf("want a JSON object, got %v", describeToken(tok))
	}
	var o object
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, describeJSONError(err, dec)
		}
		key := tok.(string) // inside an object the decoder only yields string keys
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, describeJSONError(err, dec)
		}
		if _, dup := o.get(key); dup {
			return nil, fmt.Errorf("key %q appears twice", key)
		}
		o = append(o, member{key, v})
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, describeJSONError(err, dec)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("unexpected data after the JSON object at byte %d", dec.InputOffset())
	}
	return o, nil
}

func describeJSONError(err error, dec *json.Decoder) error {
	var syntax *json.SyntaxError
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("unexpected end of input (truncated JSON)")
	case errors.As(err, &syntax):
		return fmt.Errorf("invalid JSON at byte %d: %v", syntax.Offset, syntax)
	}
	return fmt.Errorf("invalid JSON near byte %d: %s", dec.InputOffset(), strings.TrimPrefix(err.Error(), "json: "))
}

func describeToken(tok json.Token) string {
	switch tok.(type) {
	case json.Delim:
		return "an array"
	case string:
		return "a string"
	case nil:
		return "null"
	case bool:
		return "a boolean"
	}
	return "a number"
}

func (o object) get(key string) (json.RawMessage, bool) {
	i := slices.IndexFunc(o, func(m member) bool { return m.key == key })
	if i < 0 {
		return nil, false
	}
	return o[i].value, true
}

// set replaces key's value where it stands, or appends the key.
func (o *object) set(key string, v json.RawMessage) {
	if i := slices.IndexFunc(*o, func(m member) bool { return m.key == key }); i >= 0 {
		(*o)[i].value = v
		return
	}
	*o = append(*o, member{key, v})
}

// str returns key's value if it is a string.
func (o object) str(key string) (s string, present bool, err error) {
	v, ok := o.get(key)
	if !ok {
		return "", false, nil
	}
	if err := json.Unmarshal(v, &s); err != nil {
		return "", true, fmt.Errorf("%q is not a string", key)
	}
	return s, true, nil
}

// marshal writes o indented by two spaces, with a final newline. Values are reindented but
// otherwise kept as they were (no reordering, no re-escaping, numbers untouched).
func (o object) marshal() []byte {
	var compact bytes.Buffer
	compact.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			compact.WriteByte(',')
		}
		k, _ := json.Marshal(m.key)
		compact.Write(k)
		compact.WriteByte(':')
		_ = json.Compact(&compact, m.value) // every value came from the decoder or marshalArray: valid
	}
	compact.WriteByte('}')
	var out bytes.Buffer
	_ = json.Indent(&out, compact.Bytes(), "", "  ")
	out.WriteByte('\n')
	return out.Bytes()
}

func marshalArray(vs []json.RawMessage) json.RawMessage {
	var b bytes.Buffer
	b.WriteByte('[')
	for i, v := range vs {
		if i > 0 {
			b.WriteByte(',')
		}
		_ = json.Compact(&b, v)
	}
	b.WriteByte(']')
	return b.Bytes()
}

// checkVersion rejects a config whose cniVersion the plugin cannot run under.
func checkVersion(o object) error {
	v, present, err := o.str("cniVersion")
	switch {
	case err != nil:
		return err
	case !present || v == "":
		return fmt.Errorf("no cniVersion; the ambient-lite plugin needs one of %s", supportedVersions())
	case !slices.Contains(plugin.SupportedVersions.SupportedVersions(), v):
		return fmt.Errorf("cniVersion %q is not supported by the ambient-lite plugin (it supports %s: chaining needs prevResult, from 0.3.0 on)",
			v, supportedVersions())
	}
	return nil
}

func supportedVersions() string {
	return strings.Join(plugin.SupportedVersions.SupportedVersions(), ", ")
}

// pluginType returns the "type" of the plugin config p, which must be an object.
func pluginType(p json.RawMessage) (string, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(p, &m); err != nil || m == nil {
		return "", errors.New("not a JSON object")
	}
	raw, ok := m["type"]
	if !ok {
		return "", errors.New(`no "type"`)
	}
	var t string
	if err := json.Unmarshal(raw, &t); err != nil || t == "" {
		return "", errors.New(`"type" is not a non-empty string`)
	}
	return t, nil
}

// plugins returns the "plugins" of conflist o with the type of each.
func plugins(o object) ([]json.RawMessage, []string, error) {
	raw, ok := o.get("plugins")
	if !ok {
		return nil, nil, errors.New(`no "plugins" list: a .conflist holds {"cniVersion", "name", "plugins": [...]} (a single plugin config belongs in a .conf)`)
	}
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil || list == nil {
		return nil, nil, errors.New(`"plugins" is not a list`)
	}
	types := make([]string, len(list))
	for i, p := range list {
		t, err := pluginType(p)
		if err != nil {
			return nil, nil, fmt.Errorf("plugins[%d]: %w", i, err)
		}
		types[i] = t
	}
	return list, types, nil
}

// sameJSON reports whether a and b are the same JSON value, whatever their spelling.
func sameJSON(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

// chain returns the config file name (a path), with contents data, as it must be for the plugin of
// type typ to run last, configured by entry. A .conflist keeps its name (out is its new
// contents); a .conf is converted to a list holding the .conf's plugin and then ours, to be
// written as outName (name with the extension .conflist, in the same directory), after which the .conf is removed.
// changed is false when data is already chained as it must be: then nothing is to be written.
//
// Every other plugin is kept in its order with its fields as written; an entry of type typ
// elsewhere in the list, or with other settings, is replaced by entry at the end, and
// duplicates are dropped, so the list ends with exactly one, up-to-date, entry of ours.
func chain(name string, data []byte, typ string, entry json.RawMessage) (outName string, out []byte, changed bool, err error) {
	o, err := parseObject(data)
	if err != nil {
		return "", nil, false, fmt.Errorf("%w: %s: %v", ErrInvalidConfig, name, err)
	}
	if filepath.Ext(name) == extConf {
		list, err := convert(o, data)
		if err != nil {
			return "", nil, false, fmt.Errorf("%w: %s: %v", ErrInvalidConfig, name, err)
		}
		list.set("plugins", marshalArray([]json.RawMessage{data, entry}))
		return strings.TrimSuffix(name, extConf) + extConflist, list.marshal(), true, nil
	}
	if err := checkVersion(o); err != nil {
		return "", nil, false, fmt.Errorf("%w: %s: %v", ErrInvalidConfig, name, err)
	}
	list, types, err := plugins(o)
	if err != nil {
		return "", nil, false, fmt.Errorf("%w: %s: %v", ErrInvalidConfig, name, err)
	}
	if len(list) == 0 {
		return "", nil, false, fmt.Errorf("%w: %s: \"plugins\" is empty: there is no primary plugin to chain after", ErrInvalidConfig, name)
	}
	ours := 0
	for _, t := range types {
		if t == typ {
			ours++
		}
	}
	if ours == 1 && types[len(types)-1] == typ && sameJSON(list[len(list)-1], entry) {
		return name, data, false, nil
	}
	kept := make([]json.RawMessage, 0, len(list)+1)
	for i, p := range list {
		if types[i] != typ {
			kept = append(kept, p)
		}
	}
	o.set("plugins", marshalArray(append(kept, entry)))
	return name, o.marshal(), true, nil
}

// convert turns the single plugin config o (the .conf data) into a list with no plugins yet, as
// libcni's ConfListFromConf reads a .conf: the list takes the .conf's name and cniVersion.
// Istio's installer names the list "k8s-pod-network" at cniVersion 0.3.1 instead; keeping the
// name matters because runtimes cache each pod's result under the network's name.
func convert(o object, data []byte) (object, error) {
	if _, ok := o.get("plugins"); ok {
		if _, hasType := o.get("type"); !hasType {
			return nil, errors.New(`has "plugins" but no "type": a list belongs in a .conflist file`)
		}
	}
	if _, err := pluginType(data); err != nil {
		return nil, fmt.Errorf("%v: a .conf holds one plugin config", err)
	}
	if err := checkVersion(o); err != nil {
		return nil, err
	}
	list := object{{key: "cniVersion", value: mustGet(o, "cniVersion")}}
	if n, ok := o.get("name"); ok {
		list = append(list, member{"name", n})
	}
	return list, nil
}

func mustGet(o object, key string) json.RawMessage {
	v, _ := o.get(key)
	return v
}

// unchain returns conflist data without any plugin of type typ; changed is false when it had
// none (or when name is not a .conflist, which never holds a chained plugin).
func unchain(name string, data []byte, typ string) (out []byte, changed bool, err error) {
	if filepath.Ext(name) != extConflist {
		return data, false, nil
	}
	o, err := parseObject(data)
	if err != nil {
		return nil, false, fmt.Errorf("%w: %s: %v", ErrInvalidConfig, name, err)
	}
	list, types, err := plugins(o)
	if err != nil {
		return nil, false, fmt.Errorf("%w: %s: %v", ErrInvalidConfig, name, err)
	}
	kept := make([]json.RawMessage, 0, len(list))
	for i, p := range list {
		if types[i] != typ {
			kept = append(kept, p)
		}
	}
	if len(kept) == len(list) {
		return data, false, nil
	}
	o.set("plugins", marshalArray(kept))
	return o.marshal(), true, nil
}
