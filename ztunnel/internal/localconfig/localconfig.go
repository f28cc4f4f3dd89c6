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
//	policies:
//	- name: allow-sleep
//	  namespace: default
//	  scope: WORKLOAD_SELECTOR        # listed in a workload's authorizationPolicies
//	  action: ALLOW
//	  groups: [{rules: [{matches: [{principals: [{exact: cluster.local/ns/default/sa/sleep}], sourceIps: [10.10.0.0/16]}]}]}]
//
// Policies are Istio's istio.security.Authorization, with CIDR strings for addresses. It
// parses only; feeding the result to the state store is the caller's job.
package localconfig

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
	"sigs.k8s.io/yaml"
)

type file struct {
	Workloads []map[string]any `json:"workloads"`
	Services  []map[string]any `json:"services"`
	Policies  []map[string]any `json:"policies"`
}

// Config is a parsed configuration file.
type Config struct {
	Addresses []*workloadapi.Address
	Policies  []*security.Authorization
}

// Parse decodes a configuration file into workload API addresses and authorization
// policies. Unknown fields are errors, so a typo never silently drops configuration.
func Parse(b []byte) (Config, error) {
	var f file
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		return Config{}, fmt.Errorf("parsing local config: %w", err)
	}
	var out []*workloadapi.Address
	for i, raw := range f.Workloads {
		w := &workloadapi.Workload{}
		if err := decode(raw, "addresses", ipToBytes, w); err != nil {
			return Config{}, fmt.Errorf("workloads[%d] (%v): %w", i, raw["uid"], err)
		}
		out = append(out, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}})
	}
	for i, raw := range f.Services {
		s := &workloadapi.Service{}
		if err := decode(raw, "addresses", networkAddress, s); err != nil {
			return Config{}, fmt.Errorf("services[%d] (%v): %w", i, raw["hostname"], err)
		}
		out = append(out, &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}})
	}
	var policies []*security.Authorization
	for i, raw := range f.Policies {
		if err := convertCIDRs(raw); err != nil {
			return Config{}, fmt.Errorf("policies[%d] (%v/%v): %w", i, raw["namespace"], raw["name"], err)
		}
		a := &security.Authorization{}
		if err := decode(raw, "", nil, a); err != nil {
			return Config{}, fmt.Errorf("policies[%d] (%v/%v): %w", i, raw["namespace"], raw["name"], err)
		}
		policies = append(policies, a)
	}
	return Config{Addresses: out, Policies: policies}, nil
}

// cidrFields are the Match fields holding addresses, written as "10.0.0.0/8" in the file.
var cidrFields = []string{"sourceIps", "notSourceIps", "destinationIps", "notDestinationIps"}

// convertCIDRs rewrites CIDR strings in every match (groups → rules → matches) into
// {address, length}.
func convertCIDRs(policy map[string]any) error {
	groups, _ := policy["groups"].([]any)
	for _, g := range groups {
		rules, _ := asMap(g)["rules"].([]any)
		for _, r := range rules {
			matches, _ := asMap(r)["matches"].([]any)
			for _, m := range matches {
				mm := asMap(m)
				for _, field := range cidrFields {
					list, _ := mm[field].([]any)
					for j, v := range list {
						s, ok := v.(string)
						if !ok {
							continue // already {address, length}
						}
						p, err := netip.ParsePrefix(s)
						if err != nil {
							if ip, ierr := netip.ParseAddr(s); ierr == nil {
								p = netip.PrefixFrom(ip, ip.BitLen())
							} else {
								return fmt.Errorf("%s[%d]: %w", field, j, err)
							}
						}
						list[j] = map[string]any{"address": base64.StdEncoding.EncodeToString(p.Addr().AsSlice()), "length": p.Bits()}
					}
				}
			}
		}
	}
	return nil
}

func asMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

// decode rewrites raw[field]'s elements with conv, then unmarshals raw into msg.
func decode(raw map[string]any, field string, conv func(any) (any, error), msg proto.Message) error {
	if list, ok := raw[field].([]any); ok && conv != nil {
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
