-- The grid reads the jobs of 100 builds at once (20,000 for 200 builders):
-- one row per build, its jobs packed as `id:builder:name:state;...`.
-- Builder and job names never hold `:` or `;` (herd.yml allows letters,
-- digits, `-`, `_`, `.`; shards add `#N`). PostgreSQL's migration builds
-- the same view with string_agg.
CREATE VIEW grid_cells AS
SELECT build_id,
       group_concat(id || ':' || builder || ':' || name || ':' || state, ';') AS cells
FROM jobs
GROUP BY build_id;
