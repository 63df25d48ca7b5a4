// cilium-oracle: run Cilium's own policy code on policy inputs and print what the agent
// would do with them, one JSON line per input file.
//
// It is built inside a Cilium source tree of the release it speaks for (see README.md); the
// release-specific calls live in compat_<release>.go, selected with a build tag.
//
// Modes (chosen per input file):
//
//   - REST body (a file named *.rest, taken as is; or a *.json file holding a JSON array of
//     rules, or a single rule object that is then wrapped in a list):
//     the steps of the agent's PUT /v1/policy handler up to the policy importer —
//     json.Unmarshal into api.Rules (failure: HTTP 400, empty body), then Sanitize() on each
//     rule (failure: HTTP 500, the error text). Panics are caught and reported as such.
//   - Policy document (YAML or JSON with kind/spec/specs): with -static (default) the steps of
//     the agent's static policy directory (--static-cnp-path) for one file — YAML to JSON,
//     json.Unmarshal into a CiliumNetworkPolicy whatever its kind, Parse() with the cluster
//     name the agent passes, then the directory labels. With -static=false the document is
//     decoded into the type its kind names, as the Kubernetes watcher would.
//
// With -endpoints FILE (a JSON object {"name": ["source:key=value", ...], ...}) every accepted
// input also gets "selection": for each selector of each effective rule (the subject and each
// fromEndpoints/toEndpoints peer, deny rules included), the names of the endpoints whose labels
// it selects, answered by the selector types' own Matches.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/cilium/cilium/pkg/labels"
	policyapi "github.com/cilium/cilium/pkg/policy/api"
	"sigs.k8s.io/yaml"
)

// ciliumRelease is set at build time: -ldflags "-X main.ciliumRelease=<VERSION> <commit>".
var ciliumRelease = "unknown"

type selection struct {
	Path    string   `json:"path"`
	Selects []string `json:"selects"`
}

type result struct {
	File       string      `json:"file"`
	OK         bool        `json:"ok"`
	Error      string      `json:"error"`
	Input      string      `json:"input"`
	Stage      string      `json:"stage,omitempty"` // json | sanitize | panic-json | panic-sanitize | yaml | cnp-decode | cnp-parse | panic | read
	HTTPStatus int         `json:"http_status,omitempty"`
	RuleIndex  *int        `json:"rule_index,omitempty"`
	Rules      int         `json:"rules"`
	Effective  interface{} `json:"effective,omitempty"`
	Selection  []selection `json:"selection,omitempty"`
}

var (
	clusterName = flag.String("cluster", "default", "agent option cluster-name")
	static      = flag.Bool("static", true, "policy documents go through the static policy directory's steps (decoded as CiliumNetworkPolicy whatever their kind)")
	showRules   = flag.Bool("show-sanitized", false, "add the effective rules (json.Marshal of the rules the agent keeps) to each accepted input")
	endpoints   = flag.String("endpoints", "", "JSON file {name: [labels]}: add the selection answers for these endpoints")
	showVersion = flag.Bool("version", false, "print the Cilium release this was built against and exit")
	epLabels    map[string]labels.LabelArray
	epNames     []string
)

func main() {
	registerFlags()
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s [flags] FILE|DIR...\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if *showVersion {
		fmt.Println(ciliumRelease)
		return
	}
	if err := applyFlags(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if *endpoints != "" {
		data, err := os.ReadFile(*endpoints)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		var raw map[string][]string
		if err := json.Unmarshal(data, &raw); err != nil {
			fmt.Fprintln(os.Stderr, "endpoints:", err)
			os.Exit(2)
		}
		epLabels = map[string]labels.LabelArray{}
		for name, l := range raw {
			epLabels[name] = labels.ParseLabelArray(l...)
			epNames = append(epNames, name)
		}
		sort.Strings(epNames)
	}
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	var files []string
	for _, arg := range flag.Args() {
		st, err := os.Stat(arg)
		if err != nil {
			emit(result{File: arg, Error: err.Error(), Stage: "read"}, nil)
			continue
		}
		if st.IsDir() {
			var found []string
			for _, pat := range []string{"*.rest", "*.json", "*.yaml", "*.yml"} {
				m, _ := filepath.Glob(filepath.Join(arg, pat))
				found = append(found, m...)
			}
			sort.Strings(found)
			files = append(files, found...)
		} else {
			files = append(files, arg)
		}
	}
	for _, f := range files {
		r, rules := validateFile(f)
		emit(r, rules)
	}
}

func emit(r result, rules policyapi.Rules) {
	if r.OK && rules != nil {
		if *showRules {
			r.Effective = rules
		}
		if epLabels != nil {
			r.Selection = selectAll(rules)
		}
	}
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}

func selects(es policyapi.EndpointSelector) []string {
	names := []string{}
	for _, n := range epNames {
		if matches(es, epLabels[n]) {
			names = append(names, n)
		}
	}
	return names
}

func selectAll(rules policyapi.Rules) []selection {
	var out []selection
	add := func(path string, es policyapi.EndpointSelector) {
		out = append(out, selection{Path: path, Selects: selects(es)})
	}
	for i, r := range rules {
		if r == nil {
			continue
		}
		p := fmt.Sprintf("[%d]", i)
		if r.EndpointSelector.LabelSelector != nil {
			add(p+".endpointSelector", r.EndpointSelector)
		}
		if r.NodeSelector.LabelSelector != nil {
			add(p+".nodeSelector", r.NodeSelector)
		}
		for j, ing := range r.Ingress {
			for k, es := range ing.FromEndpoints {
				add(fmt.Sprintf("%s.ingress[%d].fromEndpoints[%d]", p, j, k), es)
			}
		}
		for j, ing := range r.IngressDeny {
			for k, es := range ing.FromEndpoints {
				add(fmt.Sprintf("%s.ingressDeny[%d].fromEndpoints[%d]", p, j, k), es)
			}
		}
		for j, eg := range r.Egress {
			for k, es := range eg.ToEndpoints {
				add(fmt.Sprintf("%s.egress[%d].toEndpoints[%d]", p, j, k), es)
			}
		}
		for j, eg := range r.EgressDeny {
			for k, es := range eg.ToEndpoints {
				add(fmt.Sprintf("%s.egressDeny[%d].toEndpoints[%d]", p, j, k), es)
			}
		}
	}
	return out
}

func validateFile(path string) (result, policyapi.Rules) {
	r := result{File: path}
	data, err := os.ReadFile(path)
	if err != nil {
		r.Error, r.Stage = err.Error(), "read"
		return r, nil
	}
	ext := strings.ToLower(filepath.Ext(path))
	if ext == ".rest" {
		r.Input = "rest-body"
		return restPut(r, data)
	}
	if ext == ".yaml" || ext == ".yml" {
		if *static {
			return staticFile(r, data)
		}
		j, err := yaml.YAMLToJSON(data)
		if err != nil {
			r.Input, r.Stage, r.Error = "yaml", "yaml", err.Error()
			return r, nil
		}
		data = j
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) > 0 && trimmed[0] == '{' {
		var top map[string]json.RawMessage
		if json.Unmarshal(trimmed, &top) == nil {
			_, hasKind := top["kind"]
			_, hasSpec := top["spec"]
			_, hasSpecs := top["specs"]
			if hasKind || hasSpec || hasSpecs {
				if *static {
					return staticFile(r, trimmed)
				}
				var kind string
				_ = json.Unmarshal(top["kind"], &kind)
				return parseDocument(r, kind, trimmed)
			}
			r.Input = "rule-object (wrapped in a list)"
			return restPut(r, append(append([]byte("["), trimmed...), ']'))
		}
	}
	r.Input = "rest-body"
	return restPut(r, data)
}

// restPut: the agent's PUT /v1/policy handler up to (not including) the policy importer.
func restPut(r result, body []byte) (res result, out policyapi.Rules) {
	stage := "panic-json"
	defer func() {
		if p := recover(); p != nil {
			r.OK, r.Stage, r.HTTPStatus = false, stage, 0
			r.Error = fmt.Sprintf("panic: %v", p)
			res, out = r, nil
		}
	}()
	var rules policyapi.Rules
	if err := json.Unmarshal(body, &rules); err != nil {
		r.Stage, r.HTTPStatus = "json", 400
		r.Error = err.Error()
		return r, nil
	}
	r.Rules = len(rules)
	stage = "panic-sanitize"
	for i, rule := range rules {
		idx := i
		r.RuleIndex = &idx
		if err := rule.Sanitize(); err != nil {
			r.Stage, r.HTTPStatus = "sanitize", 500
			r.Error = err.Error()
			return r, nil
		}
	}
	r.RuleIndex = nil
	r.OK, r.HTTPStatus = true, 200
	return r, rules
}

// staticFile: the agent's static policy directory for one file (pkg/policy/directory).
func staticFile(r result, data []byte) (res result, out policyapi.Rules) {
	r.Input = "static-file"
	stage := "panic"
	defer func() {
		if p := recover(); p != nil {
			r.OK, r.Stage = false, stage
			r.Error = fmt.Sprintf("panic: %v", p)
			res, out = r, nil
		}
	}()
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		r.Stage, r.Error = "yaml", err.Error()
		return r, nil
	}
	cnp := &ciliumv2.CiliumNetworkPolicy{}
	if err := json.Unmarshal(j, cnp); err != nil {
		r.Stage, r.Error = "cnp-decode", err.Error()
		return r, nil
	}
	rules, err := parseCNP(cnp)
	if err != nil {
		r.Stage, r.Error = "cnp-parse", err.Error()
		return r, nil
	}
	lbls := directoryLabels(cnp)
	for _, rule := range rules {
		rule.Labels = lbls
	}
	r.Rules = len(rules)
	r.OK = true
	return r, rules
}

// directoryLabels: the labels the static directory puts on every rule of a file (getLabels);
// the file name label is left out here (it names the input file, not the policy).
func directoryLabels(cnp *ciliumv2.CiliumNetworkPolicy) labels.LabelArray {
	derived := "CiliumClusterwideNetworkPolicy"
	lbls := labels.LabelArray{}
	if ns := cnp.ObjectMeta.Namespace; ns != "" {
		derived = "CiliumNetworkPolicy"
		lbls = append(lbls, labels.NewLabel("io.cilium.k8s.policy.namespace", ns, labels.LabelSourceDirectory))
	}
	return append(lbls, labels.NewLabel("policy-derived-from", derived, labels.LabelSourceDirectory))
}

// parseDocument: decode into the type the kind names and Parse(), as the Kubernetes watcher does.
func parseDocument(r result, kind string, data []byte) (res result, out policyapi.Rules) {
	defer func() {
		if p := recover(); p != nil {
			r.OK, r.Stage = false, "panic"
			r.Error = fmt.Sprintf("panic: %v", p)
			res, out = r, nil
		}
	}()
	var rules policyapi.Rules
	var err error
	if kind == "CiliumClusterwideNetworkPolicy" {
		r.Input = "ccnp"
		ccnp := &ciliumv2.CiliumClusterwideNetworkPolicy{}
		if err = json.Unmarshal(data, ccnp); err != nil {
			r.Stage, r.Error = "cnp-decode", err.Error()
			return r, nil
		}
		rules, err = parseCCNP(ccnp)
	} else {
		r.Input = "cnp"
		cnp := &ciliumv2.CiliumNetworkPolicy{}
		if err = json.Unmarshal(data, cnp); err != nil {
			r.Stage, r.Error = "cnp-decode", err.Error()
			return r, nil
		}
		if cnp.ObjectMeta.Namespace == "" {
			cnp.ObjectMeta.Namespace = "default" // what the API server would set
		}
		rules, err = parseCNP(cnp)
	}
	if err != nil {
		r.Stage, r.Error = "cnp-parse", err.Error()
		return r, nil
	}
	r.Rules = len(rules)
	r.OK = true
	return r, rules
}
