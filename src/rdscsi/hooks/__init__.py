"""Listeners bound to the machines: metrics, cluster events and reconcile triggers.

The machines declare *which* hooks a transition fires (`after=` names); these classes say
*what* each hook does. They are synchronous and cheap: the engine calls them inline.
"""
