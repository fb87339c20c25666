"""Channel alerts: rules over the fleet's picture, one grouped Slack message per problem."""
