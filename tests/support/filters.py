"""What the filter plugin tests share: the documentation ansible-doc shows for a filter, read from
the file next to the plugin named after it, and compared with the Python signature."""

import inspect
import os

import yaml


def filter_docs(plugin_module, name):
    """DOCUMENTATION, EXAMPLES and RETURN of filter ``name`` of ``plugin_module``."""
    path = os.path.join(os.path.dirname(plugin_module.__file__), name + ".yml")
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def signature_mismatches(plugin_module):
    """Each filter of the plugin file whose documented options differ from its parameters."""
    found = []
    for name, function in plugin_module.FilterModule().filters().items():
        docs = filter_docs(plugin_module, name)
        documented = docs["DOCUMENTATION"]
        parameters = list(inspect.signature(function).parameters.values())
        expected = {"_input"} | {parameter.name for parameter in parameters[1:]}
        if documented["name"] != name or set(documented["options"]) != expected:
            found.append("%s documents %s, takes %s" % (name, sorted(documented["options"]), sorted(expected)))
        for parameter in parameters[1:]:
            default = documented["options"][parameter.name].get("default") if parameter.name in documented["options"] else None
            if parameter.default is not inspect.Parameter.empty and default != parameter.default:
                found.append("%s: %s defaults to %r, documented %r" % (name, parameter.name, parameter.default, default))
        if not docs.get("EXAMPLES") or "netreap.cilium." + name not in docs["EXAMPLES"] or "_value" not in docs.get("RETURN", {}):
            found.append("%s: EXAMPLES must use netreap.cilium.%s and RETURN document _value" % (name, name))
    return found
