# The ECS cluster flow runs and the MLflow server run on, and their logs.
resource "aws_ecs_cluster" "this" {
  name = local.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_cloudwatch_log_group" "this" {
  for_each          = toset(["flows", "mlflow"])
  name              = "/${local.name}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.mlops.arn
}

resource "aws_security_group" "tasks" {
  #checkov:skip=CKV2_AWS_5:flow-run tasks attach it at run time through the work pool's network configuration (prefect.tf)
  name        = "${local.name}-tasks"
  description = "mlops flow runs: no inbound, outbound HTTPS and the MLflow server"
  vpc_id      = var.vpc_id

  egress {
    description = "HTTPS: Prefect API, S3, ECR, CloudWatch"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }

  egress {
    description = "the MLflow server"
    from_port   = 5000
    to_port     = 5000
    protocol    = "tcp"
    cidr_blocks = var.allowed_cidr_blocks
  }
}
