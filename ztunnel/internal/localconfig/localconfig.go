// Package localconfig reads ztunnel's local configuration file (LOCAL_XDS_PATH): the
// workloads and services to serve without a control plane, in Istio's workload API field
// names (lowerCamelCase, as protojson writes them) with one convenience: addresses are
// written as IP strings rather than base64 bytes.
//
//	workloads:
//	- uid: cluster1//Pod/default/client
//	  name: client
//	  namespace: default
//	  serviceAccount: sleep
//	  addresses: [10.10.1.2]
//	  tunnelProtocol: HBONE
//	  node: node-a
//	services:
//	- name: echo
//	  namespace: default
//	  hostname: echo.default.svc.cluster.local
//	  addresses: [10.96.0.20]
//	  ports: [{servicePort: 80, targetPort: 8080}]
//
// It parses only; feeding the result to the state store is the caller's job.
package localconfig

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"sigs.k8s.io/yaml"
)

type file struct {
	Workloads []map[string]any `json:"workloads"`
	Services  []map[string]any `json:"services"`
}

// Parse decodes a configuration file into workload API addresses. Unknown fields are
// errors, so a typo never silently drops configuration.
func Parse(b []byte) ([]*workloadapi.Address, error) {
	var f file
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		return nil, fmt.Errorf("parsing local config: %w", err)
	}
	var out []*workloadapi.Address
	for i, raw := range f.Workloads {
		w := &workloadapi.Workload{}
		if err := decode(raw, "addresses", ipToBytes, w); err != nil {
			return nil, fmt.Errorf("workloads[%d] (%v): %w", i, raw["uid"], err)
		}
		out = append(out, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}})
	}
	for i, raw := range f.Services {
		s := &workloadapi.Service{}
		if err := decode(raw, "addresses", networkAddress, s); err != nil {
			return nil, fmt.Errorf("services[%d] (%v): %w", i, raw["hostname"], err)
		}
		out = append(out, &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}})
	}
	return out, nil
}

// decode rewrites raw[field]'s elements with conv, then unmarshals raw into msg.
func decode(raw map[string]any, field string, conv func(any) (any, error), msg proto.Message) error {
	if list, ok := raw[field].([]any); ok {
		for j, v := range list {
			c, err := conv(v)
			if err != nil {
				return fmt.Errorf("%s[%d]: %w", field, j, err)
			}
			list[j] = c
		}
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return err
	}
	return protojson.Unmarshal(b, msg)
}

// ipToBytes turns "10.0.0.1" into the base64 protojson wants for bytes fields.
func ipToBytes(v any) (any, error) {
	s, ok := v.(string)
	if !ok {
		return nil, fmt.Errorf("want an IP address string, got %v", v)
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return nil, err
	}
	return base64.StdEncoding.EncodeToString(ip.AsSlice()), nil
}

// networkAddress accepts "10.96.0.20" or {network: n, address: "10.96.0.20"}.
func networkAddress(v any) (any, error) {
	switch a := v.(type) {
	case string:
		b, err := ipToBytes(a)
		return map[string]any{"address": b}, err
	case map[string]any:
		b, err := ipToBytes(a["address"])
		if err != nil {
			return nil, err
		}
		a["address"] = b
		return a, nil
	}
	return nil, fmt.Errorf("want an IP string or {network, address}, got %v", v)
}
