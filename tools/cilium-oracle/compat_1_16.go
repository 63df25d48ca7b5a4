//go:build cilium_1_16

// Cilium 1.16: logrus logging, Parse() without a cluster name (no
// --policy-default-local-cluster), no enable-non-default-deny-policies.
package main

import (
	"flag"

	"github.com/cilium/cilium/pkg/defaults"
	"github.com/cilium/cilium/pkg/fqdn/re"
	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/option"
	policyapi "github.com/cilium/cilium/pkg/policy/api"
)

var (
	l7Proxy     *bool
	icmpRules   *bool
	nodeSelLbls *bool
	lruSize     *int
)

func registerFlags() {
	l7Proxy = flag.Bool("l7-proxy", option.Config.EnableL7Proxy, "agent option enable-l7-proxy")
	icmpRules = flag.Bool("icmp-rules", option.Config.EnableICMPRules, "agent option enable-icmp-rules")
	nodeSelLbls = flag.Bool("node-selector-labels", option.Config.EnableNodeSelectorLabels, "agent option enable-node-selector-labels")
	lruSize = flag.Int("fqdn-regex-compile-lru-size", defaults.FQDNRegexCompileLRUSize, "agent option fqdn-regex-compile-lru-size")
}

func applyFlags() error {
	option.Config.EnableL7Proxy = *l7Proxy
	option.Config.EnableICMPRules = *icmpRules
	option.Config.EnableNodeSelectorLabels = *nodeSelLbls
	option.Config.FQDNRegexCompileLRUSize = *lruSize
	// The agent sets up the FQDN regex LRU at start-up; FQDN/HTTP sanitizing needs it.
	return re.InitRegexCompileLRU(option.Config.FQDNRegexCompileLRUSize)
}

func parseCNP(cnp *ciliumv2.CiliumNetworkPolicy) (policyapi.Rules, error) { return cnp.Parse() }

func parseCCNP(ccnp *ciliumv2.CiliumClusterwideNetworkPolicy) (policyapi.Rules, error) {
	return ccnp.Parse()
}

func matches(es policyapi.EndpointSelector, lbls labels.LabelArray) bool { return es.Matches(lbls) }
