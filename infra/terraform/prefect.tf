# The Prefect ECS work pool, with the same base job template `mlops deploy --env <env>` uses,
# its defaults filled with this environment's resources.
locals {
  ecs_template = jsondecode(file("${path.module}/../../deployments/work-pools/ecs.json"))
  ecs_defaults = {
    cluster                   = aws_ecs_cluster.this.arn
    vpc_id                    = var.vpc_id
    task_role_arn             = aws_iam_role.task.arn
    execution_role_arn        = aws_iam_role.execution.arn
    configure_cloudwatch_logs = true
    cloudwatch_logs_prefix    = local.name
    network_configuration = {
      subnets        = var.private_subnet_ids
      securityGroups = [aws_security_group.tasks.id]
      assignPublicIp = "DISABLED"
    }
  }
  ecs_work_pool_template = merge(local.ecs_template, {
    variables = merge(local.ecs_template.variables, {
      properties = {
        for k, v in local.ecs_template.variables.properties :
        k => contains(keys(local.ecs_defaults), k) ? merge(v, { default = local.ecs_defaults[k] }) : v
      }
    })
  })
}

resource "prefect_work_pool" "ecs" {
  name              = local.name
  type              = "ecs"
  concurrency_limit = var.work_pool_concurrency
  paused            = false
  base_job_template = jsonencode(local.ecs_work_pool_template)
}
