-- The grid reads the jobs of 100 builds at once: one row per build, its
-- jobs packed as `id:builder:name:state;...` (the SQLite migration builds
-- the same view with group_concat).
CREATE VIEW grid_cells AS
SELECT build_id,
       string_agg(id::text || ':' || builder || ':' || name || ':' || state, ';' ORDER BY id) AS cells
FROM jobs
GROUP BY build_id;
