// edgesplit/plan.hpp - planning a split: device profiles, link models, candidate cuts and
// codecs, the planners for Sequential models and for graphs.
#pragma once

#include "edgesplit/plan/candidates.hpp"
#include "edgesplit/plan/graph_planner.hpp"
#include "edgesplit/plan/graph_profile.hpp"
#include "edgesplit/plan/link.hpp"
#include "edgesplit/plan/planner.hpp"
#include "edgesplit/plan/profile.hpp"
